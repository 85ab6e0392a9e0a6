"""Publishers turn claimed outbox rows into broker messages; the relay needs only the protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from dramatiq.brokers.redis import RedisBroker
from redis.exceptions import RedisError

from shared import keys
from shared.broker import build_message
from shared.db.queries import ClaimedMessage
from shared.errors import PermanentPublishError, PublishError

# One outcome per message, in order: None when published, else why not.
Outcomes = list[PublishError | None]


class Publisher(Protocol):
    async def publish(self, messages: Sequence[ClaimedMessage]) -> Outcomes: ...


class DramatiqPublisher:
    """Enqueues each message on the Dramatiq Redis broker under the outbox message id."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker

    async def publish(self, messages: Sequence[ClaimedMessage]) -> Outcomes:
        # The broker's client is synchronous; keep it off the event loop.
        return await asyncio.to_thread(self._publish_all, messages)

    def _publish_all(self, messages: Sequence[ClaimedMessage]) -> Outcomes:
        return [self._publish_one(message) for message in messages]

    def _publish_one(self, message: ClaimedMessage) -> PublishError | None:
        if message.actor not in keys.KNOWN_ACTORS:
            return PermanentPublishError(f"unknown actor {message.actor!r}")
        try:
            self.broker.enqueue(
                build_message(message.message_id, message.queue, message.actor, message.payload)
            )
        except (RedisError, OSError) as exc:
            return PublishError(f"broker unavailable: {type(exc).__name__}: {exc}")
        return None
