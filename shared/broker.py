"""The Dramatiq Redis broker, built from settings, and the outbox→Dramatiq message mapping."""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

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
