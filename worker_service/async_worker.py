"""A Dramatiq worker that runs hundreds of scans per process as coroutines, not threads.

A scan is almost all network waiting, so a thread per scan wastes memory and CPU. Here
Dramatiq's consumers fetch as usual (prefetch bounded to `concurrency + prefetch` messages),
one dispatcher thread starts each message as a task on the AsyncIO middleware's event loop
once one of `concurrency` slots is free, and one acker thread acks or nacks the messages whose
runs have ended, those that ended together in one round trip (`acks`), with the middleware
hooks Dramatiq's own worker threads call. Dramatiq's semantics
stay: a message is acked only after its run, a failed one goes to the dead letters, an unacked
one is redelivered. The actor's `time_limit` is enforced with `asyncio.timeout` (Dramatiq's
TimeLimit middleware interrupts threads, and one thread here carries every scan).

An idle consumer blocks on its queue (`worker_service.wakeup`), so a new message is fetched one
round trip after it is queued. Dramatiq's consumer still sleeps between turns when a blocking
wait ended empty, and while the messages it holds fill its prefetch (waiting for runs to end):
`worker_timeout` caps that sleep, and `configured` sets it from `SCAN_WORKER_IDLE_POLL_MS`
(Dramatiq's 1000 ms would leave a full worker's freed slots empty for up to a second).

Graceful stop: no new message starts or is fetched; running ones get the shutdown timeout less
`HAND_BACK_RESERVE_S`; any still running then are cancelled and handed back to the queue,
as are fetched messages that never started.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dramatiq.asyncio import get_event_loop_thread
from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import Middleware, ShutdownNotifications, SkipMessage, TimeLimit
from dramatiq.worker import DELAY_QUEUE_PREFETCH, WORKER_TIMEOUT, Worker
from redis import exceptions as redis_errors

from shared import dramatiq_private, gc_pauses
from shared.logging import flush_pending_lines
from shared.settings import Settings
from worker_service import acks

# Middleware that raises into worker threads: here one thread carries every scan.
THREAD_INTERRUPTING_MIDDLEWARE = (TimeLimit, ShutdownNotifications)
# How often the dispatcher, when idle or full, looks whether the worker is stopping.
DISPATCH_POLL_S = 0.5
# Kept back from the shutdown timeout to cancel the scans still running and hand their
# messages back before the process is killed.
HAND_BACK_RESERVE_S = 2.0
# Most messages settled in one round trip: runs end in bursts (their final writes commit
# together), and a burst acked one by one stays counted against the prefetch meanwhile, so the
# consumer fetches its successors late.
ACK_BATCH = 256
# After a lost connection, the acker tries a batch again this often: a message left unacked
# would run again once this worker stops.
ACK_RETRY_S = 1.0
# Longest wait for a consumer thread to finish its turn at a stop: its blocking wait on an empty
# queue lasts at most a second (worker_service.wakeup).
CONSUMER_STOP_S = 2.0
# Said by a worker process that refuses to start (`AsyncWorkerOnly`), and its exit status
# (Dramatiq's own for a bad command line).
START_COMMAND = "python -m worker_service"
REFUSED_EXIT = 2
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
        # Dramatiq sizes the delay queue's prefetch from the thread count, which is 0 here: a
        # prefetch of 0 would fetch no delayed message ever. Its default for 8 threads.
        dramatiq_private.set_prefetch(
            self, concurrency + prefetch, DELAY_QUEUE_PREFETCH or DELAY_PREFETCH
        )
        self.slots = threading.BoundedSemaphore(concurrency)
        # Tasks of the runs on the loop (touched there only), and how many messages were
        # handed to the loop and have not ended (`settled` guards it and signals zero).
        self.running: dict[asyncio.Task[None], MessageProxy] = {}
        self.launched = 0
        self.settled = threading.Condition()
        self.finished: queue.SimpleQueue[tuple[MessageProxy, BaseException | None] | None] = (
            queue.SimpleQueue()
        )
        self.handed_back: set[str] = set()
        self.stopping = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        """Boot the middleware and consumers, then the dispatcher and the acker."""
        broker = self.broker
        broker.middleware[:] = [
            m for m in broker.middleware if not isinstance(m, THREAD_INTERRUPTING_MIDDLEWARE)
        ]
        super().start()
        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            raise RuntimeError("AsyncWorker needs the AsyncIO middleware")
        self.loop = loop_thread.loop
        for target, name in ((self._dispatch, "dispatcher"), (self._ack, "acker")):
            thread = threading.Thread(target=target, name=f"scan-outbox-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def running_count(self) -> int:
        with self.settled:
            return self.launched

    def _dispatch(self) -> None:
        while not self.stopping.is_set():
            if not self.slots.acquire(timeout=DISPATCH_POLL_S):
                continue
            # A slot freed during the stop must not start another message.
            if self.stopping.is_set():
                self.slots.release()
                return
            try:
                message = dramatiq_private.next_message(self, DISPATCH_POLL_S)
            except queue.Empty:
                self.slots.release()
                continue
            self._launch(message)

    def _launch(self, message: MessageProxy) -> None:
        """Start `message` on the loop; one the middleware skips goes straight to the acker."""
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
        limit_s = limit_ms / 1000 if limit_ms else None
        with self.settled:
            self.launched += 1
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._start, message, run, limit_s)

    def _start(
        self, message: MessageProxy, run: Callable[..., Awaitable[None]], limit_s: float | None
    ) -> None:
        """On the loop: the run's task."""
        assert self.loop is not None
        task = self.loop.create_task(_run(message, run, limit_s))
        self.running[task] = message
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        """On the loop: the run ended; its message goes to the acker."""
        message = self.running.pop(task)
        self.slots.release()
        exc = asyncio.CancelledError() if task.cancelled() else task.exception()
        self.finished.put((message, exc))
        with self.settled:
            self.launched -= 1
            if not self.launched:
                self.settled.notify_all()

    def _ack(self) -> None:
        """Settle the messages whose runs ended, those that ended together at once, until the
        stop's end-of-work marker."""
        while True:
            batch: list[tuple[MessageProxy, BaseException | None]] = []
            item = self.finished.get()
            while item is not None:
                batch.append(item)
                if len(batch) == ACK_BATCH:
                    break
                try:
                    item = self.finished.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._settle(batch)
            if item is None:
                return

    def _settle(self, batch: list[tuple[MessageProxy, BaseException | None]]) -> None:
        """Hooks, then acks; an unexpected error costs this batch its acks (its messages run
        again once this worker stops, as with Dramatiq's own worker), never the acker."""
        try:
            threads = dramatiq_private.consumer_threads(self)
            by_consumer: dict[str, list[MessageProxy]] = {}
            for message, exc in batch:
                if message.message_id in self.handed_back:
                    self.handed_back.discard(message.message_id)
                    self._hand_back(threads[message.queue_name], message)
                else:
                    self._after_run(message, exc)
                    by_consumer.setdefault(message.queue_name, []).append(message)
            for queue_name, messages in by_consumer.items():
                self._ack_all(dramatiq_private.broker_consumer(threads[queue_name]), messages)
        except Exception:
            self.logger.exception("Failed to settle %d messages.", len(batch))
        finally:
            for message, _exc in batch:
                dramatiq_private.work_done(self)
                message.clear_exception()

    def _after_run(self, message: MessageProxy, exc: BaseException | None) -> None:
        """The middleware hooks Dramatiq's worker threads call after a run."""
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

    def _ack_all(self, consumer: Any, messages: list[MessageProxy]) -> None:
        """Ack (nack, if failed) `messages` in one round trip, trying again while Redis is out
        as Dramatiq's own consumer does."""
        for message in messages:
            self.broker.emit_before(acks.command_for(message), message)
        while True:
            try:
                acks.settle_many(consumer, messages)
                break
            except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
                self.logger.warning(
                    "Failed to settle %d messages: %s; trying again in %s s.",
                    len(messages),
                    exc,
                    ACK_RETRY_S,
                )
                time.sleep(ACK_RETRY_S)
        for message in messages:
            self.broker.emit_after(acks.command_for(message), message)

    def _hand_back(self, consumer: Any, message: MessageProxy) -> None:
        """Return a message cut short by the stop to its queue, unacked, for another worker."""
        try:
            dramatiq_private.requeue(consumer, [message])
        except BrokerConnectionError:
            self.logger.warning("Failed to hand back message %s.", message, exc_info=True)
        # The Redis consumer counts it as outstanding until acked or nacked.
        dramatiq_private.forget_outstanding(
            dramatiq_private.broker_consumer(consumer), [message.message_id]
        )

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
        for consumer in dramatiq_private.consumer_threads(self).values():
            consumer.stop()
        running = self.running_count()
        self.logger.info("Finishing %d running messages before shutdown...", running)
        wait_s = max(0.0, timeout / 1000 - HAND_BACK_RESERVE_S)
        all_ended = self._wait_settled(wait_s)
        consumers_deadline = time.monotonic() + CONSUMER_STOP_S
        for consumer in dramatiq_private.consumer_threads(self).values():
            consumer.join(max(0.0, consumers_deadline - time.monotonic()))
        if not all_ended:
            self.logger.warning("Handing back %d messages still running.", self.running_count())
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._cancel_running)
            self._wait_settled(HAND_BACK_RESERVE_S / 2)
        self.finished.put(None)
        for thread in self.threads[1:]:
            thread.join()
        left_ms = max(0, int(timeout - (time.monotonic() - started) * 1000))
        super().stop(timeout=left_ms)
        # The loop has stopped: lines of its last turn would otherwise be lost, since a forked
        # worker process ends without running its exit handlers.
        flush_pending_lines()

    def _wait_settled(self, timeout_s: float) -> bool:
        """True once every message handed to the loop has ended, False after `timeout_s`."""
        with self.settled:
            return self.settled.wait_for(lambda: not self.launched, timeout_s)

    def _cancel_running(self) -> None:
        """On the loop: cancel every run, marking its message to be handed back."""
        for task, message in self.running.items():
            self.handed_back.add(message.message_id)
            task.cancel()


class AsyncWorkerOnly(Middleware):
    """Stops a worker process before it boots unless its worker is an `AsyncWorker`.

    The scan actor is a coroutine that relies on this worker: its `time_limit` is enforced by
    `asyncio.timeout` in `_run`, and `current_message()` is known only there. Dramatiq's own
    worker (`dramatiq worker_service.actors`) would run every scan on its few threads with
    neither, so the process says which command starts the worker and exits.
    """

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        if isinstance(worker, AsyncWorker):
            return
        print(
            f"Error: start the worker with `{START_COMMAND}` (or `scanctl worker`): Dramatiq's "
            f"own worker ({type(worker).__name__}) cannot run scan-outbox's actors",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(REFUSED_EXIT)


def configured(settings: Settings) -> type[AsyncWorker]:
    """An AsyncWorker class that Dramatiq's CLI builds the way it builds its own worker:
    `worker_concurrency` runs, `worker_prefetch` more fetched, and `worker_idle_poll_ms` as
    its consumers' idle sleep cap."""

    class ConfiguredWorker(AsyncWorker):
        def __init__(
            self,
            broker: Broker,
            *,
            queues: set[str] | None = None,
            worker_timeout: int = WORKER_TIMEOUT,
            worker_threads: int = 0,
        ) -> None:
            # `worker_threads` comes from Dramatiq's --threads, which the CLI refuses; its
            # `worker_timeout` (the `dramatiq_worker_timeout` variable) gives way to the setting.
            super().__init__(
                broker,
                queues=queues,
                worker_timeout=settings.worker_idle_poll_ms,
                concurrency=settings.worker_concurrency,
                prefetch=settings.worker_prefetch,
            )

        def start(self) -> None:
            super().start()
            # A worker process's objects from start-up live as long as it does.
            gc_pauses.freeze_startup_objects()

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
