"""Statements on callback deliveries as their owners and the operators see them: each try
recorded with its outcome, pages by id, one delivery with its attempts, replaying ended
ones and writing a test event. An `owner` of None is an administrator (every client's);
otherwise a statement never reads or writes another user's rows. None of them commits.

Idiom: expression language on the models for the reads and the replay, the ORM's `add` for
the test event; `text()` built once at import for the try's record.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Delivery, DeliveryAttempt

GONE_STATUS = 410
STATES = ("pending", "dead", "delivered", "all")
TEST_EVENT = "callback.test"
# The outcomes a try records: delivered, failed (tried again), gone (410, ended), dead.
OUTCOMES = ("delivered", "failed", "gone", "dead")


def in_state(state: str) -> list[ColumnElement[bool]]:
    """The conditions of deliveries in one of `STATES` (none for "all"); "dead" includes
    those a receiver ended with 410 Gone."""
    if state == "pending":
        return [Delivery.delivered_at.is_(None), Delivery.dead_at.is_(None)]
    if state == "dead":
        return [Delivery.dead_at.is_not(None)]
    if state == "delivered":
        return [Delivery.delivered_at.is_not(None)]
    return []


def state_of(row: Delivery) -> str:
    """pending, delivered, gone (the receiver answered 410: ended at once) or dead."""
    if row.delivered_at is not None:
        return "delivered"
    if row.dead_at is None:
        return "pending"
    return "gone" if row.last_status == GONE_STATUS else "dead"


def _owned(owner: int | None) -> list[ColumnElement[bool]]:
    return [] if owner is None else [Delivery.user_id == owner]


# --- a try and its outcome -------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    row_id: int
    started_at: datetime
    duration_ms: int
    status: int | None
    error: str | None
    retry_in_s: float | None  # None: no further try (delivered, gone or dead)

    @property
    def outcome(self) -> str:
        if self.status is not None and 200 <= self.status < 300:
            return "delivered"
        if self.retry_in_s is not None:
            return "failed"
        return "gone" if self.status == GONE_STATUS else "dead"


# The try is recorded and the delivery moved on in one statement: atomic by itself, so
# the relay needs no BEGIN and COMMIT round trips, and no attempt exists without its
# outcome on the delivery.
_RECORD_SQL = text(
    """
    WITH attempt AS (
        INSERT INTO delivery_attempts
            (delivery_row_id, attempted_at, duration_ms, status, error, outcome)
        VALUES (:row_id, :started_at, :duration_ms, :status, :error, :outcome)
    )
    UPDATE deliveries SET
        last_status = :status,
        last_error = :error,
        delivered_at = CASE WHEN :outcome = 'delivered' THEN now() ELSE delivered_at END,
        dead_at = CASE WHEN :outcome IN ('gone', 'dead') THEN now() ELSE dead_at END,
        available_at = CASE WHEN :outcome = 'failed'
                            THEN now() + make_interval(secs => :retry_in_s)
                            ELSE available_at END
    WHERE id = :row_id
    """
)


async def record_attempt(session: AsyncSession, attempt: Attempt) -> None:
    """Write the try and move its delivery on: delivered, due again, or ended."""
    params: dict[str, Any] = {
        "row_id": attempt.row_id,
        "started_at": attempt.started_at,
        "duration_ms": attempt.duration_ms,
        "status": attempt.status,
        "error": attempt.error,
        "outcome": attempt.outcome,
        "retry_in_s": attempt.retry_in_s or 0.0,
    }
    await session.execute(_RECORD_SQL, params)


# --- reads ---------------------------------------------------------------------


async def list_page(
    session: AsyncSession,
    owner: int | None,
    state: str,
    limit: int,
    before_id: int | None = None,
) -> Sequence[Delivery]:
    """Newest first, in one of `STATES`, ids below `before_id` (keyset pages)."""
    stmt = select(Delivery).where(*_owned(owner), *in_state(state))
    if before_id is not None:
        stmt = stmt.where(Delivery.id < before_id)
    return (await session.execute(stmt.order_by(Delivery.id.desc()).limit(limit))).scalars().all()


async def get(session: AsyncSession, owner: int | None, row_id: int) -> Delivery | None:
    """The delivery, or None when it does not exist or is another user's."""
    stmt = select(Delivery).where(Delivery.id == row_id, *_owned(owner))
    return (await session.execute(stmt)).scalar_one_or_none()


async def attempts_of(session: AsyncSession, row_id: int) -> Sequence[DeliveryAttempt]:
    """Every recorded try of delivery `row_id`, oldest first."""
    stmt = select(DeliveryAttempt).where(DeliveryAttempt.delivery_row_id == row_id)
    return (await session.execute(stmt.order_by(DeliveryAttempt.id))).scalars().all()


# --- writes --------------------------------------------------------------------


async def replay(session: AsyncSession, owner: int | None, row_ids: Sequence[int] | None) -> int:
    """Make ended deliveries (dead or gone; these, or all of the owner's when None) due now
    with their tries reset, keeping their delivery id; the number replayed."""
    stmt = update(Delivery).where(Delivery.dead_at.is_not(None), *_owned(owner))
    if row_ids is not None:
        stmt = stmt.where(Delivery.id.in_(row_ids))
    stmt = stmt.values(dead_at=None, available_at=func.now(), attempts=0).returning(Delivery.id)
    return len((await session.execute(stmt)).all())


async def insert_test(session: AsyncSession, owner: int, url: str) -> Delivery:
    """A `callback.test` delivery to `url`, due now, sent by the relays like any other."""
    delivery_id = uuid.uuid4()
    payload = {"id": str(delivery_id), "event": TEST_EVENT, "test": True}
    row = Delivery(delivery_id=delivery_id, user_id=owner, url=url, payload=payload)
    session.add(row)
    await session.flush()
    await session.refresh(row)
    return row
