"""The Dramatiq Redis broker, built from settings, and the outbox→Dramatiq message mapping."""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from shared import redis_clients
from shared.settings import Settings


def create_broker(
    settings: Settings,
    *,
    middleware: list[Any] | None = None,
    socket_timeout_s: float | None = None,
) -> RedisBroker:
    """A Redis broker on the configured broker Redis (a URL, or the primary its Sentinels
    name); pass `middleware` to replace Dramatiq's defaults.

    `socket_timeout_s` bounds every Redis call (by default a hung Redis blocks forever).
    """
    client = redis_clients.sync_client(settings, broker=True, timeout_s=socket_timeout_s)
    broker: RedisBroker = RedisBroker(  # type: ignore[no-untyped-call]
        client=client, middleware=middleware
    )
    return broker


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
