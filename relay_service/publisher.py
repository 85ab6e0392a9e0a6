"""Publishers turn claimed outbox rows into broker messages; the relay needs only the protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from redis import exceptions as redis_errors

from relay_service import pipelined
from shared import keys
from shared.db.outbox import ClaimedMessage
from shared.dramatiq_broker import build_message
from shared.errors import PermanentPublishError, PublishError
from shared.logging import get_logger

log = get_logger(__name__)

# One outcome per message, in order: the id the broker stores it under when published,
# else why not.
Outcome = str | PublishError
Outcomes = list[Outcome]

# The broker cannot be reached at all: no point trying the rest of a batch.
_UNREACHABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
# A message the encoder cannot turn into bytes will never be publishable.
_UNENCODABLE = (TypeError, ValueError)
# Batches up to this size are sent from the event loop itself. Handing a batch to a thread
# and back cost ~0.3 ms of the ~2 ms from a commit to its message at idle (two wake-ups of
# an idle thread, docs/performance.md); a bigger batch's encoding would hold the loop for
# milliseconds, and a thread lets the loop serve probes and callbacks meanwhile.
INLINE_MAX_MESSAGES = 16


class Publisher(Protocol):
    async def publish(self, messages: Sequence[ClaimedMessage]) -> Outcomes: ...


def _unavailable(exc: BaseException) -> PublishError:
    return PublishError(f"broker unavailable: {type(exc).__name__}: {exc}")


class DramatiqPublisher:
    """Enqueues messages on the Dramatiq Redis broker under their outbox message ids.

    A batch goes out in one pipeline when this Dramatiq supports it. If the
    pipeline fails as a whole, each message is tried on its own, so every row
    still gets its own outcome.

    The broker's client is synchronous. A small batch is sent from the event loop
    while the broker answers; after any failure batches go through a thread until one
    is published whole, so a broker that stops answering holds the loop for one socket
    timeout per outage at most.
    """

    def __init__(self, broker: RedisBroker, *, use_pipeline: bool | None = None) -> None:
        self.broker = broker
        self.use_pipeline = pipelined.usable(broker) if use_pipeline is None else use_pipeline
        self.inline = True

    async def publish(self, messages: Sequence[ClaimedMessage]) -> Outcomes:
        if self.inline and len(messages) <= INLINE_MAX_MESSAGES:
            outcomes = self._publish_all(messages)
        else:
            outcomes = await asyncio.to_thread(self._publish_all, messages)
        self.inline = all(isinstance(outcome, str) for outcome in outcomes)
        return outcomes

    def _publish_all(self, messages: Sequence[ClaimedMessage]) -> Outcomes:
        outcomes: list[Outcome | None] = [None] * len(messages)
        positions: list[int] = []
        sendable: list[dramatiq.Message[Any]] = []
        for position, row in enumerate(messages):
            if row.actor not in keys.KNOWN_ACTORS:
                outcomes[position] = PermanentPublishError(f"unknown actor {row.actor!r}")
                continue
            positions.append(position)
            sendable.append(build_message(row.message_id, row.queue, row.actor, row.payload))
        if sendable:
            sent = self._send_pipelined(sendable) if self.use_pipeline else None
            if sent is None:
                sent = self._send_one_by_one(sendable)
            for position, outcome in zip(positions, sent, strict=True):
                outcomes[position] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _send_pipelined(self, messages: Sequence[dramatiq.Message[Any]]) -> Outcomes | None:
        """Outcomes from one pipeline, or None when it failed as a whole."""
        try:
            replies = pipelined.enqueue_many(self.broker, messages)
        except (redis_errors.RedisError, *_UNREACHABLE, *_UNENCODABLE) as exc:
            log.warning("publish_pipeline_failed", error=type(exc).__name__, size=len(messages))
            return None
        return [
            PublishError(f"broker refused: {reply}") if isinstance(reply, Exception) else stored
            for stored, reply in replies
        ]

    def _send_one_by_one(self, messages: Sequence[dramatiq.Message[Any]]) -> Outcomes:
        outcomes: Outcomes = []
        for index, message in enumerate(messages):
            try:
                sent = self.broker.enqueue(message)
            except _UNREACHABLE as exc:
                outcomes.extend([_unavailable(exc)] * (len(messages) - index))
                break
            except redis_errors.RedisError as exc:
                outcomes.append(PublishError(f"broker refused: {exc}"))
            except _UNENCODABLE as exc:
                outcomes.append(PermanentPublishError(f"cannot encode message: {exc}"))
            else:
                outcomes.append(str(sent.options["redis_message_id"]))
        return outcomes
