"""The statements that send tasks round again: expired leases, messages known to be gone, a
broker that lost its data, and the last-resort sweep of queued tasks nobody can locate.

A re-dispatch is not an attempt: attempts count runs (claims), `redispatches` counts the
dispatches that were not the task's fault. Only the expired-lease sweep can fail a task, and
only one that has already run `max_attempts` times. Each UPDATE is conditional on the state
it was chosen in, so a task that moved on meanwhile (claimed, finished, cancelled) is left
alone; the caller writes the new outbox rows in the same transaction.

Idiom: `text()` built once at import.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Float, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.predicates import FAILED, LEASE_CLEARED, LEASE_EXPIRED, PENDING, QUEUED, RUNNING

# What every re-dispatch writes: back to pending, no message to wait for, one more dispatch.
_SENT_AGAIN = f"""
    status = {PENDING}, queued_at = NULL, queued_outbox_id = NULL,
    redispatches = t.redispatches + 1, updated_at = now()
"""


@dataclass(frozen=True)
class RedispatchedTask:
    task_id: uuid.UUID
    status: str  # pending (sent again) or failed (out of attempts)
    attempts: int


# Out of attempts (it ran max_attempts times and never finished), the task fails with the
# reason; otherwise it goes back to pending without being charged: the claim already was.
# A failure fires the deliveries trigger `task_finished_callbacks` (docs/design.md
# "Completion callbacks"): the task's callback rows are written in this transaction.
_EXPIRED_LEASES_SQL = text(
    f"""
    UPDATE tasks t SET
        status = CASE WHEN t.attempts < t.max_attempts THEN {PENDING} ELSE {FAILED} END,
        error = CASE WHEN t.attempts < t.max_attempts THEN 'lease expired; sent again'
                     ELSE 'lease expired after ' || t.attempts || ' attempts' END,
        finished_at = CASE WHEN t.attempts < t.max_attempts THEN NULL ELSE now() END,
        redispatches = t.redispatches
                       + CASE WHEN t.attempts < t.max_attempts THEN 1 ELSE 0 END,
        queued_at = NULL, queued_outbox_id = NULL, updated_at = now(), {LEASE_CLEARED}
    WHERE t.id IN (SELECT id FROM tasks
                   WHERE {LEASE_EXPIRED}
                   ORDER BY lease_expires_at LIMIT :limit FOR UPDATE SKIP LOCKED)
      AND {LEASE_EXPIRED}
    RETURNING t.id, t.status, t.attempts
    """
)


async def redispatch_expired_leases(session: AsyncSession, limit: int) -> list[RedispatchedTask]:
    """Running tasks whose lease expired -> pending (or failed when out of attempts)."""
    rows = (await session.execute(_EXPIRED_LEASES_SQL, {"limit": limit})).all()
    return [RedispatchedTask(*row) for row in rows]


@dataclass(frozen=True)
class QueuedMessage:
    """A queued task and where its message should be: `broker_message_id` in `queue`; None
    when nobody knows (published before ids were recorded, or its outbox row was pruned)."""

    task_id: uuid.UUID
    outbox_id: int | None
    queue: str | None
    broker_message_id: str | None
    queued_at: datetime


_QUEUED_MESSAGES_SQL = text(
    f"""
    SELECT t.id, t.queued_outbox_id, o.queue, o.broker_message_id, t.queued_at
    FROM tasks t LEFT JOIN outbox o ON o.id = t.queued_outbox_id
    WHERE t.status = {QUEUED} AND t.queued_at < now() - make_interval(secs => :floor_s)
      AND (t.queued_at, t.id) > (:after_at, :after_id)
    ORDER BY t.queued_at, t.id
    LIMIT :limit
    """
).bindparams(bindparam("floor_s", type_=Float))

# Before every queued task: where a walk starts.
WALK_START = (datetime.fromisoformat("1970-01-01T00:00:00+00:00"), uuid.UUID(int=0))


async def list_queued_messages(
    session: AsyncSession,
    floor_s: float,
    after: tuple[datetime, uuid.UUID],
    limit: int,
) -> list[QueuedMessage]:
    """Up to `limit` tasks queued more than `floor_s` ago, oldest first, after `after`
    (the (queued_at, id) of the last one already seen)."""
    params = {"floor_s": floor_s, "after_at": after[0], "after_id": after[1], "limit": limit}
    rows = (await session.execute(_QUEUED_MESSAGES_SQL, params)).all()
    return [QueuedMessage(*row) for row in rows]


# Only while the task still waits for that very message: a claim, a newer dispatch or a
# cancel since the check leaves it alone.
_LOST_SQL = text(
    f"""
    UPDATE tasks t SET {_SENT_AGAIN}
    FROM unnest(CAST(:task_ids AS uuid[]), CAST(:outbox_ids AS bigint[])) AS lost(id, outbox_id)
    WHERE t.id = lost.id AND t.status = {QUEUED} AND t.queued_outbox_id = lost.outbox_id
    RETURNING t.id
    """
)


async def redispatch_lost(session: AsyncSession, lost: Sequence[QueuedMessage]) -> list[uuid.UUID]:
    """Queued tasks whose message the broker no longer holds -> pending; returns their ids."""
    if not lost:
        return []
    params = {
        "task_ids": [m.task_id for m in lost],
        "outbox_ids": [m.outbox_id for m in lost],
    }
    return [row[0] for row in (await session.execute(_LOST_SQL, params)).all()]


_ALL_QUEUED_SQL = text(
    f"""
    UPDATE tasks t SET {_SENT_AGAIN}
    WHERE t.id IN (SELECT id FROM tasks
                   WHERE status = {QUEUED} AND queued_at <= :before
                   ORDER BY queued_at LIMIT :limit FOR UPDATE SKIP LOCKED)
      AND t.status = {QUEUED}
    RETURNING t.id
    """
)


async def redispatch_queued_before(
    session: AsyncSession, before: datetime, limit: int
) -> list[uuid.UUID]:
    """Up to `limit` tasks queued at or before `before` -> pending (the broker lost its data)."""
    rows = (await session.execute(_ALL_QUEUED_SQL, {"before": before, "limit": limit})).all()
    return [row[0] for row in rows]


# Whereabouts unknown: no broker id recorded for the message the task waits on.
_UNLOCATED = f"""
    t2.status = {QUEUED} AND t2.queued_at < now() - make_interval(secs => :stale_s)
    AND NOT EXISTS (SELECT 1 FROM outbox o
                    WHERE o.id = t2.queued_outbox_id AND o.broker_message_id IS NOT NULL)
"""

_UNLOCATED_SQL = text(
    f"""
    UPDATE tasks t SET {_SENT_AGAIN}
    WHERE t.id IN (SELECT t2.id FROM tasks t2 WHERE {_UNLOCATED}
                   ORDER BY t2.queued_at LIMIT :limit FOR UPDATE SKIP LOCKED)
      AND t.status = {QUEUED}
    RETURNING t.id, t.status, t.attempts
    """
).bindparams(bindparam("stale_s", type_=Float))


async def redispatch_unlocated(
    session: AsyncSession, stale_s: float, limit: int
) -> list[RedispatchedTask]:
    """Tasks queued longer than `stale_s` whose message nobody can locate -> pending. The last
    resort: never fails a task and never charges an attempt, so a backlog cannot hurt."""
    rows = (await session.execute(_UNLOCATED_SQL, {"stale_s": stale_s, "limit": limit})).all()
    return [RedispatchedTask(*row) for row in rows]


@dataclass(frozen=True)
class OrphanCounts:
    """Tasks a re-dispatch by time would pick up now."""

    expired_leases: int
    expired_out_of_attempts: int
    unlocated: int

    @property
    def total(self) -> int:
        return self.expired_leases + self.unlocated


_COUNT_ORPHANS_SQL = text(
    f"""
    SELECT count(*) FILTER (WHERE {LEASE_EXPIRED}),
           count(*) FILTER (WHERE {LEASE_EXPIRED} AND t2.attempts >= t2.max_attempts),
           count(*) FILTER (WHERE {_UNLOCATED})
    FROM tasks t2 WHERE t2.status IN ({RUNNING}, {QUEUED})
    """
).bindparams(bindparam("stale_s", type_=Float))


async def count_orphans(session: AsyncSession, stale_s: float) -> OrphanCounts:
    """Running tasks whose lease expired (and how many of them are out of attempts), and
    queued tasks older than `stale_s` whose message nobody can locate."""
    row = (await session.execute(_COUNT_ORPHANS_SQL, {"stale_s": stale_s})).one()
    return OrphanCounts(*row)


@dataclass(frozen=True)
class BrokerState:
    epoch: str
    run_id: str | None


async def database_now(session: AsyncSession) -> datetime:
    """The database's clock: what queued_at is compared with."""
    return (await session.execute(text("SELECT now()"))).scalar_one()  # type: ignore[no-any-return]


async def get_broker_state(session: AsyncSession) -> BrokerState | None:
    row = (await session.execute(text("SELECT epoch, run_id FROM broker_state"))).first()
    return BrokerState(row[0], row[1]) if row is not None else None


async def set_broker_state(session: AsyncSession, state: BrokerState) -> None:
    stmt = text(
        """
        INSERT INTO broker_state (id, epoch, run_id) VALUES (1, :epoch, :run_id)
        ON CONFLICT (id) DO UPDATE
        SET epoch = EXCLUDED.epoch, run_id = EXCLUDED.run_id, updated_at = now()
        """
    )
    await session.execute(stmt, {"epoch": state.epoch, "run_id": state.run_id})
