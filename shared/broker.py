"""The Dramatiq Redis broker, built from settings, the outbox→Dramatiq message mapping, and
its dispatch script run in a pipeline (batched enqueues and acks)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis
from redis.exceptions import NoScriptError

from shared.settings import Settings


def create_broker(
    settings: Settings,
    *,
    middleware: list[Any] | None = None,
    socket_timeout_s: float | None = None,
) -> RedisBroker:
    """A Redis broker for the configured URL; pass `middleware` to replace Dramatiq's defaults.

    `socket_timeout_s` bounds every Redis call (by default a hung Redis blocks forever).
    """
    if socket_timeout_s is None:
        broker: RedisBroker = RedisBroker(  # type: ignore[no-untyped-call]
            url=settings.effective_broker_url, middleware=middleware
        )
        return broker
    client = redis.Redis.from_url(
        settings.effective_broker_url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
    )
    timed: RedisBroker = RedisBroker(  # type: ignore[no-untyped-call]
        client=client, middleware=middleware
    )
    return timed


def build_message(
    message_id: uuid.UUID, queue: str, actor: str, payload: dict[str, Any]
) -> dramatiq.Message[Any]:
    """The Dramatiq message for an outbox row, carrying the row's message id.

    `send_with_options(message_id=...)` would only put the id in the options,
    so the message is built directly and given to `broker.enqueue`.
    """
    return dramatiq.Message(
        queue_name=queue,
        actor_name=actor,
        args=(),
        kwargs=payload,
        options={},
        message_id=str(message_id),
    )


# One run of the dispatch script: the command, the queue, then the command's own arguments.
Dispatch = tuple[str, str, tuple[object, ...]]


def run_dispatches(broker: RedisBroker, dispatches: Sequence[Dispatch]) -> list[object]:
    """Run the broker's `dispatch` script once per entry, with the arguments
    `RedisBroker._dispatch` passes, in one pipeline: how the relay enqueues a batch and the
    worker settles one. Dramatiq's private API, of the series pyproject pins.

    Returns each run's reply, or the exception Redis answered for that run alone; a
    connection failure raises, and then any prefix may have run. The script is called by
    its hash alone: a pipeline given the script object would first ask Redis whether it
    exists, a second round trip on every batch. A Redis that lost its scripts (restarted,
    SCRIPT FLUSH) answers NOSCRIPT without running anything, and those runs are retried
    once the script is loaded again.
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


def _pipeline(broker: RedisBroker, sha: str, dispatches: Sequence[Dispatch]) -> list[object]:
    pipe = broker.client.pipeline(transaction=False)
    for command, queue_name, extra in dispatches:
        args = (
            command,
            current_millis(),
            queue_name,
            broker.broker_id,
            broker.heartbeat_timeout,
            broker.dead_message_ttl,
            broker._should_do_maintenance(command),
            broker._max_unpack_size(),  # type: ignore[no-untyped-call]
            *extra,
        )
        pipe.evalsha(sha, 1, broker.namespace, *args)
    replies: list[object] = pipe.execute(raise_on_error=False)
    return replies
