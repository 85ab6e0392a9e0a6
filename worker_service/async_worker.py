"""A Dramatiq worker that runs hundreds of scans per process as coroutines, not threads.

A scan is almost all network waiting, so a thread per scan wastes memory and CPU. Here
Dramatiq's consumers fetch as usual (prefetch bounded to `concurrency + prefetch` messages),
one dispatcher thread starts each message as a coroutine on the AsyncIO middleware's event loop
once one of `concurrency` slots is free, and `ACKERS` acker threads ack or nack each message
after its run, with the middleware hooks Dramatiq's own worker threads call. Dramatiq's semantics
stay: a message is acked only after its run, a failed one goes to the dead letters, an unacked
one is redelivered. The actor's `time_limit` is enforced with `asyncio.timeout` (Dramatiq's
TimeLimit middleware interrupts threads, and one thread here carries every scan).

Graceful stop: no new message starts or is fetched; running ones get the shutdown timeout less
`HAND_BACK_RESERVE_S`; any still running then are cancelled and handed back to the queue,
as are fetched messages that never started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dramatiq.asyncio import get_event_loop_thread
from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import ShutdownNotifications, SkipMessage, TimeLimit
from dramatiq.worker import DELAY_QUEUE_PREFETCH, WORKER_TIMEOUT, Worker

# Middleware that raises into worker threads: here one thread carries every scan.
THREAD_INTERRUPTING_MIDDLEWARE = (TimeLimit, ShutdownNotifications)
# How often the dispatcher, when idle or full, looks whether the worker is stopping.
DISPATCH_POLL_S = 0.5
# Kept back from the shutdown timeout to cancel the scans still running and hand their
# messages back before the process is killed.
HAND_BACK_RESERVE_S = 2.0
# Threads that ack or nack finished messages, one Redis round trip each: runs end in bursts
# (their final writes commit together), and one thread acking a burst in turn keeps those
# messages counted against the prefetch, so the consumer fetches their successors late.
ACKERS = 8
# Longest wait for a consumer thread to finish its turn at a stop: its blocking wait on an empty
# queue lasts at most a second (worker_service.wakeup).
CONSUMER_STOP_S = 2.0
# Delayed messages (a producer's `delay=`) a process holds until their eta: what Dramatiq's own
# worker holds with its default 8 threads (they wait in memory, not in a scan slot).
DELAY_PREFETCH = 8000

_current_message: contextvars.ContextVar[MessageProxy | None] = contextvars.ContextVar(
    "scan_outbox_current_message", default=None
)


def current_message() -> MessageProxy | None:
    """The message whose run the calling coroutine belongs to (None outside a run)."""
    return _current_message.get()


class AsyncWorker(Worker):
    """Dramatiq's `Worker` with at most `concurrency` messages running at once as coroutines
    and at most `prefetch` more fetched and waiting."""

    def __init__(
        self,
        broker: Broker,
        *,
        concurrency: int,
        prefetch: int,
        queues: set[str] | None = None,
        worker_timeout: int = WORKER_TIMEOUT,
    ) -> None:
        if concurrency < 1 or prefetch < 0:
            raise ValueError("concurrency must be at least 1 and prefetch at least 0")
        # No worker threads: the dispatcher and the event loop replace them.
        super().__init__(broker, queues=queues, worker_timeout=worker_timeout, worker_threads=0)
        self.concurrency = concurrency
        # Dramatiq's Redis consumer counts fetched-but-unacked messages against its prefetch.
        self.queue_prefetch = concurrency + prefetch
        # Dramatiq sizes the delay queue's prefetch from the thread count, which is 0 here: a
        # prefetch of 0 would fetch no delayed message ever. Its default for 8 threads.
        self.delay_prefetch = DELAY_QUEUE_PREFETCH or DELAY_PREFETCH
        self.slots = threading.BoundedSemaphore(concurrency)
        self.in_flight: dict[concurrent.futures.Future[None], MessageProxy] = {}
        self.in_flight_lock = threading.Lock()
        self.finished: queue.SimpleQueue[tuple[MessageProxy, BaseException | None] | None] = (
            queue.SimpleQueue()
        )
        self.handed_back: set[str] = set()
        self.stopping = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        """Boot the middleware and consumers, then the dispatcher and the ackers."""
        broker = self.broker
        broker.middleware[:] = [
            m for m in broker.middleware if not isinstance(m, THREAD_INTERRUPTING_MIDDLEWARE)
        ]
        super().start()
        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            raise RuntimeError("AsyncWorker needs the AsyncIO middleware")
        self.loop = loop_thread.loop
        roles = [(self._dispatch, "dispatcher")]
        roles += [(self._ack, f"acker-{index}") for index in range(ACKERS)]
        for target, name in roles:
            thread = threading.Thread(target=target, name=f"scan-outbox-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def running_count(self) -> int:
        with self.in_flight_lock:
            return len(self.in_flight)

    def _dispatch(self) -> None:
        while not self.stopping.is_set():
            if not self.slots.acquire(timeout=DISPATCH_POLL_S):
                continue
            # A slot freed during the stop must not start another message.
            if self.stopping.is_set():
                self.slots.release()
                return
            try:
                item = self.work_queue.get(timeout=DISPATCH_POLL_S)
            except queue.Empty:
                self.slots.release()
                continue
            self._launch(item.message)

    def _launch(self, message: MessageProxy) -> None:
        """Start `message` on the loop; one the middleware skips goes straight to the ackers."""
        try:
            self.broker.emit_before("process_message", message)
        except SkipMessage as exc:
            self.logger.warning("Message %s was skipped.", message)
            self.broker.emit_after("skip_message", message)
            self.slots.release()
            self.finished.put((message, exc))
            return
        actor = self.broker.get_actor(message.actor_name)
        run = _coroutine_function(actor.fn)
        limit_ms = message.options.get("time_limit") or actor.options.get("time_limit")
        coro = _run(message, run, limit_ms / 1000 if limit_ms else None)
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        with self.in_flight_lock:
            self.in_flight[future] = message
        future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self.in_flight_lock:
            message = self.in_flight.pop(future)
        self.slots.release()
        exc = asyncio.CancelledError() if future.cancelled() else future.exception()
        self.finished.put((message, exc))

    def _ack(self) -> None:
        while (item := self.finished.get()) is not None:
            message, exc = item
            try:
                self._post_process(message, exc)
            finally:
                self.work_queue.task_done()
                message.clear_exception()

    def _post_process(self, message: MessageProxy, exc: BaseException | None) -> None:
        consumer = self.consumers[message.queue_name]
        if message.message_id in self.handed_back:
            self.handed_back.discard(message.message_id)
            self._hand_back(consumer, message)
            return
        if isinstance(exc, SkipMessage):
            if message.failed:
                message.stuff_exception(exc)
        elif exc is not None:
            message.stuff_exception(exc)
            self.logger.error(
                "Failed to process message %s with unhandled exception.", message, exc_info=exc
            )
            self.broker.emit_after("process_message", message, exception=exc)
        else:
            self.broker.emit_after("process_message", message, result=None)
        consumer.post_process_message(message)

    def _hand_back(self, consumer: Any, message: MessageProxy) -> None:
        """Return a message cut short by the stop to its queue, unacked, for another worker."""
        try:
            consumer.requeue_messages([message])
        except BrokerConnectionError:
            self.logger.warning("Failed to hand back message %s.", message, exc_info=True)
        # The Redis consumer counts it as outstanding until acked or nacked.
        outstanding = getattr(consumer.consumer, "queued_message_ids", None)
        if outstanding is not None:
            outstanding.discard(message.message_id)

    def stop(self, timeout: int = 600_000) -> None:
        """Start and fetch nothing more, let running messages finish within `timeout` ms less
        the hand-back reserve, cancel and hand back the rest, then Dramatiq's own stop (which
        requeues the fetched messages that never started)."""
        started = time.monotonic()
        self.stopping.set()
        for thread in self.threads[:1]:
            thread.join()
        # Fetch nothing more: a message handed back below would otherwise be fetched again by
        # this worker and left in its ack set. Running messages are still acked through the
        # consumers, which Dramatiq's own stop closes at the end.
        for consumer in self.consumers.values():
            consumer.stop()
        running = self.running_count()
        self.logger.info("Finishing %d running messages before shutdown...", running)
        wait_s = max(0.0, timeout / 1000 - HAND_BACK_RESERVE_S)
        with self.in_flight_lock:
            futures = list(self.in_flight)
        _done, late = concurrent.futures.wait(futures, timeout=wait_s)
        consumers_deadline = time.monotonic() + CONSUMER_STOP_S
        for consumer in self.consumers.values():
            consumer.join(max(0.0, consumers_deadline - time.monotonic()))
        if late:
            self.logger.warning("Handing back %d messages still running.", len(late))
            self._cancel(late)
        for _acker in self.threads[1:]:
            self.finished.put(None)
        for thread in self.threads[1:]:
            thread.join()
        left_ms = max(0, int(timeout - (time.monotonic() - started) * 1000))
        super().stop(timeout=left_ms)

    def _cancel(self, futures: set[concurrent.futures.Future[None]]) -> None:
        with self.in_flight_lock:
            for future in futures:
                message = self.in_flight.get(future)
                if message is not None:
                    self.handed_back.add(message.message_id)
        for future in futures:
            future.cancel()
        concurrent.futures.wait(futures, timeout=HAND_BACK_RESERVE_S / 2)


def configured(concurrency: int, prefetch: int) -> type[AsyncWorker]:
    """An AsyncWorker class that Dramatiq's CLI builds the way it builds its own worker."""

    class ConfiguredWorker(AsyncWorker):
        def __init__(
            self,
            broker: Broker,
            *,
            queues: set[str] | None = None,
            worker_timeout: int = WORKER_TIMEOUT,
            worker_threads: int = 0,
        ) -> None:
            # `worker_threads` comes from Dramatiq's --threads, which the CLI refuses.
            super().__init__(
                broker,
                queues=queues,
                worker_timeout=worker_timeout,
                concurrency=concurrency,
                prefetch=prefetch,
            )

    return ConfiguredWorker


def _coroutine_function(fn: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
    """The `async def` behind a Dramatiq actor (Dramatiq wraps it to run synchronously)."""
    original = getattr(fn, "__wrapped__", fn)
    if not inspect.iscoroutinefunction(original):
        raise TypeError(f"AsyncWorker runs async actors only, not {fn!r}")
    return original


async def _run(
    message: MessageProxy, fn: Callable[..., Awaitable[None]], limit_s: float | None
) -> None:
    _current_message.set(message)
    async with asyncio.timeout(limit_s):
        await fn(*message.args, **message.kwargs)
