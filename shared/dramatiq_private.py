"""Every use of Dramatiq's private API, in one module, behind one version check.

scan-outbox relies on parts of Dramatiq that its documentation does not promise: the Redis
broker's Lua `dispatch` script and the arguments `RedisBroker._dispatch` passes it (the relay's
pipelined enqueue, the worker's batched acks, the leader's requeue of dead consumers), the
broker's `client`, its Redis consumer class (`_RedisConsumer`, subclassed by the worker's
waking consumer) and the worker's own bookkeeping (its consumer threads, work queue and prefetch,
driven by `AsyncWorker`). pyproject pins the series checked here;
`SUPPORTED` is the one check, and tests/unit/test_dramatiq_private.py fails when the library
changes under any of these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.worker import ConsumerThread, Worker
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

SUPPORTED_SERIES = "2.2."
# The one version check: everything below was written and tested against this series.
SUPPORTED = dramatiq.__version__.startswith(SUPPORTED_SERIES)

# The Redis consumer the worker's waking consumer extends (`RedisBroker.consumer_class`).
RedisConsumer = _RedisConsumer

# One run of the dispatch script: the command, the queue, then the command's own arguments.
Dispatch = tuple[str, str, tuple[EncodableT, ...]]


# --- the broker ---------------------------------------------------------------


def client_of(broker: RedisBroker) -> redis.Redis:
    """The broker's Redis client (the one it was built with)."""
    client: redis.Redis = broker.client
    return client


def can_pipeline(broker: RedisBroker) -> bool:
    """True when this Dramatiq is the supported series and its broker has the dispatch script."""
    return SUPPORTED and "dispatch" in broker.scripts


def dispatcher(broker: RedisBroker, command: str) -> Any:
    """`RedisBroker._dispatch(command)`: a callable running one command of the script."""
    return broker._dispatch(command)  # type: ignore[no-untyped-call]


def run_dispatches(broker: RedisBroker, dispatches: Sequence[Dispatch]) -> list[object]:
    """Run the broker's `dispatch` script once per entry, with the arguments
    `RedisBroker._dispatch` passes, in one pipeline: how the relay enqueues a batch and the
    worker settles one.

    Returns each run's reply, or the exception Redis answered for that run alone; a
    connection failure raises, and then any prefix may have run. The script is called by
    its hash alone: a pipeline given the script object would first ask Redis whether it
    exists, a second round trip on every batch. A Redis that lost its scripts (restarted,
    SCRIPT FLUSH, a failover to a replica) answers NOSCRIPT without running anything, and
    those runs are retried once the script is loaded again.
    """
    script = broker.scripts["dispatch"]
    replies = _pipeline(broker, script.sha, dispatches)
    missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        script.sha = broker.client.script_load(script.script)
        retried = _pipeline(broker, script.sha, [dispatches[index] for index in missing])
        for index, reply in zip(missing, retried, strict=True):
            replies[index] = reply
    return replies


def script_args(
    broker: RedisBroker,
    command: str,
    queue_name: str,
    extra: Sequence[EncodableT] = (),
    *,
    now_ms: int | None = None,
    consumer_id: str | None = None,
    heartbeat_timeout_ms: int | None = None,
    do_maintenance: bool | None = None,
) -> list[EncodableT]:
    """The `dispatch` script's arguments for one run of `command`, as
    `RedisBroker._dispatch` builds them; each keyword, when given, stands in for the
    broker's own value (the time, its consumer id, its heartbeat timeout, whether this
    run also does the broker's maintenance)."""
    maintenance = (
        broker._should_do_maintenance(command) if do_maintenance is None else int(do_maintenance)
    )
    return [
        command,
        current_millis() if now_ms is None else now_ms,
        queue_name,
        broker.broker_id if consumer_id is None else consumer_id,
        broker.heartbeat_timeout if heartbeat_timeout_ms is None else heartbeat_timeout_ms,
        broker.dead_message_ttl,
        maintenance,
        broker._max_unpack_size(),  # type: ignore[no-untyped-call]
        *extra,
    ]


def _pipeline(broker: RedisBroker, sha: str, dispatches: Sequence[Dispatch]) -> list[object]:
    pipe = broker.client.pipeline(transaction=False)
    for command, queue_name, extra in dispatches:
        pipe.evalsha(sha, 1, broker.namespace, *script_args(broker, command, queue_name, extra))
    replies: list[object] = pipe.execute(raise_on_error=False)
    return replies


def run_maintenance(broker: RedisBroker, queue_name: str, heartbeat_timeout_ms: int) -> None:
    """The broker's maintenance, run now: messages fetched by workers silent for
    `heartbeat_timeout_ms` go back to the queue."""
    # "requeue" with no message ids: only the maintenance runs.
    args = script_args(
        broker,
        "requeue",
        queue_name,
        heartbeat_timeout_ms=heartbeat_timeout_ms,
        do_maintenance=True,
    )
    broker.scripts["dispatch"](keys=[broker.namespace], args=args)


# --- the Redis consumer -------------------------------------------------------


def forget_outstanding(consumer: Any, message_ids: Iterable[str]) -> None:
    """Stop counting messages as fetched-but-unsettled against the consumer's prefetch."""
    outstanding = getattr(consumer, "queued_message_ids", None)
    if outstanding is not None:
        for message_id in message_ids:
            outstanding.discard(message_id)


# --- the worker ---------------------------------------------------------------


def consumer_threads(worker: Worker) -> Mapping[str, ConsumerThread]:
    """The worker's consumer thread per queue."""
    return worker.consumers


def broker_consumer(thread: ConsumerThread) -> Any:
    """The broker consumer a consumer thread fetches through."""
    return thread.consumer


def requeue(thread: ConsumerThread, messages: Sequence[MessageProxy]) -> None:
    """Hand fetched messages back to their queue, unacked, through their consumer thread."""
    thread.requeue_messages(messages)


def next_message(worker: Worker, timeout_s: float) -> MessageProxy:
    """The next fetched message from the worker's work queue; `queue.Empty` after `timeout_s`."""
    item = worker.work_queue.get(timeout=timeout_s)
    return item.message


def work_done(worker: Worker) -> None:
    """Mark one message taken from the work queue as dealt with (Dramatiq's stop joins it)."""
    worker.work_queue.task_done()


def set_prefetch(worker: Worker, queue_prefetch: int, delay_prefetch: int) -> None:
    """How many messages the worker's consumers may hold fetched-but-unsettled."""
    worker.queue_prefetch = queue_prefetch
    worker.delay_prefetch = delay_prefetch
