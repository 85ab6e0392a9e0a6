"""The Dramatiq Redis broker, built from settings, the outbox→Dramatiq message mapping, and
its dispatch script queued on a pipeline (batched enqueues and acks)."""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis
from redis.client import Pipeline

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


def queue_dispatch(
    broker: RedisBroker, pipe: Pipeline, command: str, queue_name: str, *extra: object
) -> None:
    """Queue on `pipe` one run of the broker's `dispatch` script, with the arguments
    `RedisBroker._dispatch` passes for `command`: how the relay enqueues a batch and the worker
    settles one in a round trip each. Dramatiq's private API, of the series pyproject pins."""
    args = [
        command,
        current_millis(),
        queue_name,
        broker.broker_id,
        broker.heartbeat_timeout,
        broker.dead_message_ttl,
        broker._should_do_maintenance(command),
        broker._max_unpack_size(),  # type: ignore[no-untyped-call]
        *extra,
    ]
    broker.scripts["dispatch"](keys=[broker.namespace], args=args, client=pipe)
