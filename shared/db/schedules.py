"""Statements for recurring schedules: a client's schedules, the firing claim, the runs and
their comparison. None of them commits.

The claim is `FOR UPDATE SKIP LOCKED` on due rows: any number of relays fire, none waits for
another, and a row another relay has just advanced no longer matches (READ COMMITTED re-checks
`next_fire_at` on the newest version). The runs and the new fire times are written set-based,
one statement each per claim; each run's batch goes through `batches.insert_batch`.

Idiom: expression language on the models (the ORM's `add` for a new schedule) for a client's
schedules and the reads; `text()` built once at import for the firing claim, the runs, the
new fire times and the changes' delivery; the runs and fire times bind one array per field of
`NewRun` and `Advance` (`shared/db/bulk.py`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    and_,
    bindparam,
    delete,
    func,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.types import BigInteger, Integer, Text

from shared.db.bulk import execute_for_rows
from shared.db.models import Schedule, ScheduleRun, Task, User
from shared.db.predicates import NOT_ENDED


async def insert_schedule(session: AsyncSession, schedule: Schedule) -> Schedule:
    session.add(schedule)
    await session.flush()
    return schedule


async def count_user_schedules(session: AsyncSession, user_id: int) -> int:
    stmt = select(func.count()).select_from(Schedule).where(Schedule.user_id == user_id)
    return int((await session.execute(stmt)).scalar_one())


async def list_user_schedules(
    session: AsyncSession, user_id: int | None, limit: int
) -> Sequence[Schedule]:
    """The user's schedules (every user's for None), oldest first."""
    stmt = select(Schedule).order_by(Schedule.created_at, Schedule.id).limit(limit)
    if user_id is not None:
        stmt = stmt.where(Schedule.user_id == user_id)
    return (await session.execute(stmt)).scalars().all()


def _owned(user_id: int, schedule_id: uuid.UUID) -> ColumnElement[bool]:
    """The schedule, if it is the user's: another user's is as missing as a deleted one."""
    return and_(Schedule.id == schedule_id, Schedule.user_id == user_id)


async def _changed(session: AsyncSession, stmt: Executable) -> bool:
    """Run a write of at most one schedule; whether it changed one."""
    return bool(getattr(await session.execute(stmt), "rowcount", 0))


async def get_user_schedule(
    session: AsyncSession, user_id: int, schedule_id: uuid.UUID
) -> Schedule | None:
    """The user's own schedule; None for a missing one and for another user's alike."""
    stmt = (
        select(Schedule)
        .where(_owned(user_id, schedule_id))
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def pause(session: AsyncSession, user_id: int, schedule_id: uuid.UUID) -> bool:
    """Pause a running schedule (it leaves the due index); False if it was not running."""
    stmt = (
        update(Schedule)
        .where(_owned(user_id, schedule_id), Schedule.paused_at.is_(None))
        .values(paused_at=func.now(), next_fire_at=None, updated_at=func.now())
    )
    return await _changed(session, stmt)


async def resume(
    session: AsyncSession, user_id: int, schedule_id: uuid.UUID, next_fire_at: datetime | None
) -> bool:
    """Resume a paused schedule from its next tick after now (the ticks while paused are not
    missed: nobody wanted them); False if it was not paused."""
    stmt = (
        update(Schedule)
        .where(_owned(user_id, schedule_id), Schedule.paused_at.is_not(None))
        .values(paused_at=None, next_fire_at=next_fire_at, updated_at=func.now())
    )
    return await _changed(session, stmt)


async def delete_schedule(session: AsyncSession, user_id: int, schedule_id: uuid.UUID) -> bool:
    """Delete the schedule and its run records (the runs' batches stay the user's)."""
    return await _changed(session, delete(Schedule).where(_owned(user_id, schedule_id)))


# Due schedules, earliest first, from ix_schedules_due; the clock is the database's unless
# the caller gives one (a fixed clock in tests), so relays on skewed hosts agree.
_CLAIM_DUE_SQL = text(
    """
    WITH clock AS (SELECT coalesce(CAST(:now AS timestamptz), statement_timestamp()) AS now)
    SELECT s.id, s.user_id, s.cron, s.timezone, s.interval_s, s.anchor_at, s.domains, s.config,
           s.callback_url, s.callback_changes_only, s.missed, s.next_fire_at, clock.now,
           EXISTS (SELECT 1 FROM users u WHERE u.id = s.user_id AND u.revoked_at IS NOT NULL)
               AS revoked
    FROM schedules s, clock
    WHERE s.next_fire_at <= clock.now
    ORDER BY s.next_fire_at
    LIMIT :limit
    FOR UPDATE OF s SKIP LOCKED
    """
).bindparams(bindparam("now", type_=TIMESTAMP(timezone=True)))


@dataclass(frozen=True)
class DueSchedule:
    id: uuid.UUID
    user_id: int
    cron: str | None
    timezone: str
    interval_s: int | None
    anchor_at: datetime
    domains: list[str]
    config: dict[str, Any]
    callback_url: str | None
    callback_changes_only: bool
    missed: str
    next_fire_at: datetime
    now: datetime
    revoked: bool  # the owner's token was revoked


async def claim_due(
    session: AsyncSession, limit: int, now: datetime | None = None
) -> list[DueSchedule]:
    """Lock up to `limit` due schedules no other transaction holds, until the caller's
    transaction ends; each carries the clock the claim used."""
    rows = (await session.execute(_CLAIM_DUE_SQL, {"now": now, "limit": limit})).mappings()
    return [DueSchedule(**row) for row in rows]


@dataclass(frozen=True)
class NewRun:
    schedule_id: uuid.UUID
    user_id: int
    tick_at: datetime
    missed_ticks: int
    batch_id: uuid.UUID | None
    skipped_reason: str | None


# ON CONFLICT: a tick already recorded is never recorded twice (the claim already prevents it;
# this is the database's own guarantee).
_INSERT_RUNS_SQL = text(
    """
    INSERT INTO schedule_runs (schedule_id, user_id, tick_at, missed_ticks, batch_id,
                               skipped_reason)
    SELECT * FROM unnest(CAST(:schedule_id AS uuid[]), CAST(:user_id AS bigint[]),
                         CAST(:tick_at AS timestamptz[]), CAST(:missed_ticks AS integer[]),
                         CAST(:batch_id AS uuid[]), CAST(:skipped_reason AS text[]))
    ON CONFLICT (schedule_id, tick_at) DO NOTHING
    """
).bindparams(
    bindparam("schedule_id", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("user_id", type_=ARRAY(BigInteger)),
    bindparam("tick_at", type_=ARRAY(TIMESTAMP(timezone=True))),
    bindparam("missed_ticks", type_=ARRAY(Integer)),
    bindparam("batch_id", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("skipped_reason", type_=ARRAY(Text)),
)


async def insert_runs(session: AsyncSession, runs: Sequence[NewRun]) -> None:
    """Record the runs, one statement for all (a tick already recorded is left as it was)."""
    await execute_for_rows(session, _INSERT_RUNS_SQL, runs)


_ADVANCE_SQL = text(
    """
    UPDATE schedules s SET next_fire_at = n.next_fire_at,
                           last_fired_at = coalesce(n.fired_tick, s.last_fired_at)
    FROM unnest(CAST(:schedule_id AS uuid[]), CAST(:next_fire_at AS timestamptz[]),
                CAST(:fired_tick AS timestamptz[])) AS n(id, next_fire_at, fired_tick)
    WHERE s.id = n.id
    """
).bindparams(
    bindparam("schedule_id", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("next_fire_at", type_=ARRAY(TIMESTAMP(timezone=True))),
    bindparam("fired_tick", type_=ARRAY(TIMESTAMP(timezone=True))),
)


@dataclass(frozen=True)
class Advance:
    schedule_id: uuid.UUID
    next_fire_at: datetime | None  # None: the trigger never fires again
    fired_tick: datetime | None


async def advance(session: AsyncSession, moves: Sequence[Advance]) -> None:
    """Set each claimed schedule's next fire time (and the tick it fired, if any)."""
    await execute_for_rows(session, _ADVANCE_SQL, moves)


async def list_runs(
    session: AsyncSession, schedule_id: uuid.UUID, limit: int
) -> Sequence[ScheduleRun]:
    """The schedule's runs, latest tick first (uq_schedule_runs_tick)."""
    stmt = (
        select(ScheduleRun)
        .where(ScheduleRun.schedule_id == schedule_id)
        .order_by(ScheduleRun.tick_at.desc())
        .limit(limit)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalars().all()


async def get_run(session: AsyncSession, schedule_id: uuid.UUID, run_id: int) -> ScheduleRun | None:
    stmt = select(ScheduleRun).where(
        ScheduleRun.schedule_id == schedule_id, ScheduleRun.id == run_id
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def previous_run(session: AsyncSession, run: ScheduleRun) -> ScheduleRun | None:
    """The schedule's last run with a batch before `run`'s tick."""
    stmt = (
        select(ScheduleRun)
        .where(
            ScheduleRun.schedule_id == run.schedule_id,
            ScheduleRun.tick_at < run.tick_at,
            ScheduleRun.batch_id.is_not(None),
        )
        .order_by(ScheduleRun.tick_at.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def batch_results(
    session: AsyncSession, batch_id: uuid.UUID
) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Each domain of the batch: (task status, result)."""
    stmt = select(Task.target_domain, Task.status, Task.result).where(Task.batch_id == batch_id)
    rows = (await session.execute(stmt)).all()
    return {row.target_domain: (row.status, row.result) for row in rows}


# Runs whose batch has ended (no task outside the terminal states), oldest first; a run another
# relay is reporting is skipped. Only unreported runs are in the partial index.
_CLAIM_ENDED_SQL = text(
    f"""
    SELECT r.id FROM schedule_runs r
    WHERE r.reported_at IS NULL AND r.batch_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.batch_id = r.batch_id AND t.{NOT_ENDED})
    ORDER BY r.id
    LIMIT :limit
    FOR UPDATE OF r SKIP LOCKED
    """
)


async def claim_ended_runs(session: AsyncSession, limit: int) -> Sequence[ScheduleRun]:
    ids = (await session.execute(_CLAIM_ENDED_SQL, {"limit": limit})).scalars().all()
    if not ids:
        return []
    stmt = select(ScheduleRun).where(ScheduleRun.id.in_(ids)).order_by(ScheduleRun.id)
    return (await session.execute(stmt)).scalars().all()


async def mark_reported(session: AsyncSession, run_id: int, changes: list[dict[str, Any]]) -> None:
    stmt = (
        update(ScheduleRun)
        .where(ScheduleRun.id == run_id)
        .values(reported_at=func.now(), changes=changes)
    )
    await session.execute(stmt)


# The changes-only callback, in the deliveries outbox the relays' deliverers POST from (the
# relay that wrote it wakes its deliverer after commit; the others find it by their poll).
_INSERT_CHANGE_DELIVERY_SQL = text(
    """
    INSERT INTO deliveries (delivery_id, user_id, url, payload)
    VALUES (:delivery_id, :user_id, :url, :payload)
    """
).bindparams(
    bindparam("delivery_id", type_=UUID(as_uuid=True)),
    bindparam("payload", type_=JSONB),
)


async def insert_change_delivery(
    session: AsyncSession, user_id: int, url: str, payload: dict[str, Any]
) -> uuid.UUID:
    delivery_id = uuid.uuid4()
    params = {
        "delivery_id": delivery_id,
        "user_id": user_id,
        "url": url,
        "payload": {"id": str(delivery_id), **payload},
    }
    await session.execute(_INSERT_CHANGE_DELIVERY_SQL, params)
    return delivery_id


@dataclass(frozen=True)
class UpcomingSchedule:
    schedule: Schedule
    owner: str
    last_run: ScheduleRun | None


async def list_upcoming(session: AsyncSession, limit: int) -> list[UpcomingSchedule]:
    """Every user's schedules, next to fire first (paused last), each with its owner's name
    and latest run (one statement: the latest run is one probe of uq_schedule_runs_tick)."""
    latest = (
        select(ScheduleRun)
        .where(ScheduleRun.schedule_id == Schedule.id)
        .order_by(ScheduleRun.tick_at.desc())
        .limit(1)
        .lateral()
    )
    last_run = aliased(ScheduleRun, latest)
    stmt = (
        select(Schedule, User.name, last_run)
        .join(User, User.id == Schedule.user_id)
        .outerjoin(last_run, true())
        .order_by(Schedule.next_fire_at.asc().nulls_last(), Schedule.created_at)
        .limit(limit)
    )
    rows = (await session.execute(stmt)).all()
    return [UpcomingSchedule(schedule, owner, run) for schedule, owner, run in rows]
