"""The read-only SQL of the operations dashboard (`/ui`).

Kept beside the dashboard, its only user, under the rules of `shared/db/`:
small named async functions taking a session, none of which commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, bindparam, or_, select, text, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import Text

from shared import keys
from shared.db import deliveries
from shared.db.models import Delivery, OutboxMessage, Task, TaskStatus, User

ALL_STATUSES = [status.value for status in TaskStatus]

# Every statement that sets created_at, started_at or finished_at also sets
# updated_at = now(), and updated_at only moves forward: so `updated_at >= since`
# holds for every task created, started or finished since then, and the
# (status, updated_at) index finds them. Naming every status lets PostgreSQL use
# that index without a skip scan (older than 18 has none); the window costs the
# rows touched in it, not the whole table.
_WINDOW = """
    bounds AS (
        SELECT date_trunc('minute', now()) - make_interval(mins => :minutes - 1) AS since
    )
"""

_ACTIVITY_SQL = text(
    f"""
    WITH {_WINDOW},
    minutes AS (
        SELECT generate_series(since, date_trunc('minute', now()), interval '1 minute') AS minute
        FROM bounds
    ),
    recent AS (
        SELECT t.created_at, t.finished_at, bounds.since FROM tasks t, bounds
        WHERE t.status = ANY(:statuses) AND t.updated_at >= bounds.since
    ),
    created AS (
        SELECT date_trunc('minute', created_at) AS minute, count(*) AS n
        FROM recent WHERE created_at >= since GROUP BY 1
    ),
    finished AS (
        SELECT date_trunc('minute', finished_at) AS minute, count(*) AS n
        FROM recent WHERE finished_at >= since GROUP BY 1
    ),
    published AS (
        SELECT date_trunc('minute', published_at) AS minute, count(*) AS n
        FROM outbox, bounds WHERE published_at >= bounds.since GROUP BY 1
    )
    SELECT m.minute, coalesce(c.n, 0), coalesce(p.n, 0), coalesce(f.n, 0)
    FROM minutes m
    LEFT JOIN created c USING (minute)
    LEFT JOIN published p USING (minute)
    LEFT JOIN finished f USING (minute)
    ORDER BY m.minute
    """
).bindparams(bindparam("minutes", type_=Integer), bindparam("statuses", type_=ARRAY(Text)))


@dataclass(frozen=True)
class MinuteActivity:
    minute: datetime
    created: int
    published: int
    finished: int


async def activity_per_minute(session: AsyncSession, minutes: int) -> list[MinuteActivity]:
    """Tasks created, outbox rows published and tasks finished in each of the last
    `minutes` minutes (the current one included), oldest first, zeros included."""
    params = {"minutes": minutes, "statuses": ALL_STATUSES}
    rows = (await session.execute(_ACTIVITY_SQL, params)).all()
    return [MinuteActivity(*row) for row in rows]


# A run starts from the newest message that was due before it started: its
# available_at is the commit of a create or retry, the end of a deferral or
# backoff, or the moment a dead row was replayed, so the gap is time spent in
# the pipeline, not a delay that was asked for.
_START_LATENCY_SQL = text(
    f"""
    WITH {_WINDOW},
    started AS (
        SELECT t.started_at,
               EXTRACT(EPOCH FROM t.started_at - m.available_at) * 1000 AS ms
        FROM tasks t
        CROSS JOIN bounds
        JOIN LATERAL (
            SELECT o.available_at FROM outbox o
            WHERE o.task_id = t.id AND o.available_at <= t.started_at
            ORDER BY o.id DESC LIMIT 1
        ) m ON true
        WHERE t.status = ANY(:statuses) AND t.updated_at >= bounds.since
          AND t.started_at >= bounds.since
    )
    SELECT date_trunc('minute', started_at) AS minute, count(*),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY ms)
    FROM started
    GROUP BY GROUPING SETS ((date_trunc('minute', started_at)), ())
    ORDER BY minute NULLS FIRST
    """
).bindparams(bindparam("minutes", type_=Integer), bindparam("statuses", type_=ARRAY(Text)))


@dataclass(frozen=True)
class StartLatency:
    """Commit-to-start latency of the runs started in one minute (or a whole window)."""

    minute: datetime | None
    runs: int
    p50_ms: float
    p95_ms: float


async def start_latency(
    session: AsyncSession, minutes: int
) -> tuple[StartLatency | None, list[StartLatency]]:
    """(the whole window, each minute that had a start) over the last `minutes` minutes."""
    params = {"minutes": minutes, "statuses": ALL_STATUSES}
    rows = [StartLatency(*row) for row in (await session.execute(_START_LATENCY_SQL, params))]
    overall = next((row for row in rows if row.minute is None), None)
    return overall, [row for row in rows if row.minute is not None]


# A bigint advisory key shows in pg_locks as its high and low 32 bits, objsubid 1.
# The leader is whoever holds the lock, whatever its connection is called.
_RELAY_CONNECTIONS_SQL = text(
    """
    WITH leader AS (
        SELECT pid FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND objsubid = 1
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND classid::bigint = :high AND objid::bigint = :low
    )
    SELECT a.pid, a.application_name, host(a.client_addr), a.client_port, a.backend_start,
           a.state, a.pid IN (SELECT pid FROM leader)
    FROM pg_stat_activity a
    WHERE a.datname = current_database()
      AND (a.application_name LIKE :prefix OR a.pid IN (SELECT pid FROM leader))
    ORDER BY a.backend_start, a.pid
    """
)


@dataclass(frozen=True)
class RelayConnection:
    """A relay's connection as PostgreSQL sees it (fields other roles may not see are None)."""

    pid: int
    application_name: str
    client_addr: str | None
    client_port: int | None
    connected_at: datetime | None
    state: str | None
    leader: bool


async def relay_connections(session: AsyncSession, leader_lock: int) -> list[RelayConnection]:
    """Connections named like a relay's, and the one holding `leader_lock`, oldest first."""
    params = {
        "high": (leader_lock >> 32) & 0xFFFFFFFF,
        "low": leader_lock & 0xFFFFFFFF,
        "prefix": keys.RELAY_APPLICATION_NAME_PREFIX + "%",
    }
    rows = (await session.execute(_RELAY_CONNECTIONS_SQL, params)).all()
    return [RelayConnection(*row) for row in rows]


@dataclass(frozen=True)
class TaskFilter:
    """Every field None matches every task."""

    status: str | None = None
    user_name: str | None = None
    domain_contains: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


async def search_tasks(
    session: AsyncSession,
    filters: TaskFilter,
    *,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[tuple[Task, str]]:
    """Newest first across users, each with its owner's name; `before` is the
    (created_at, id) of the last row already shown."""
    stmt = select(Task, User.name).join(User, User.id == Task.user_id)
    if filters.status is not None:
        stmt = stmt.where(Task.status == filters.status)
    if filters.user_name is not None:
        stmt = stmt.where(User.name == filters.user_name)
    if filters.domain_contains is not None:
        stmt = stmt.where(Task.target_domain.contains(filters.domain_contains, autoescape=True))
    if filters.created_from is not None:
        stmt = stmt.where(Task.created_at >= filters.created_from)
    if filters.created_to is not None:
        stmt = stmt.where(Task.created_at < filters.created_to)
    if before is not None:
        stmt = stmt.where(tuple_(Task.created_at, Task.id) < tuple_(*before))
    stmt = stmt.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit)
    return [(task, name) for task, name in (await session.execute(stmt)).all()]


async def list_task_messages(session: AsyncSession, task_id: uuid.UUID) -> Sequence[OutboxMessage]:
    """Every outbox row of a task still kept, oldest first."""
    stmt = select(OutboxMessage).where(OutboxMessage.task_id == task_id).order_by(OutboxMessage.id)
    return (await session.execute(stmt)).scalars().all()


async def list_unpublished(session: AsyncSession, limit: int) -> Sequence[OutboxMessage]:
    """The backlog, oldest first (what the relay will publish next)."""
    stmt = (
        select(OutboxMessage)
        .where(OutboxMessage.published_at.is_(None), OutboxMessage.dead_at.is_(None))
        .order_by(OutboxMessage.id)
        .limit(limit)
    )
    return (await session.execute(stmt)).scalars().all()


async def search_deliveries(
    session: AsyncSession, state: str, *, limit: int, before_id: int | None = None
) -> list[tuple[Delivery, str]]:
    """Callback deliveries in one of `deliveries.STATES`, newest first across users, each
    with its owner's name; `before_id` is the id of the last row already shown."""
    stmt = (
        select(Delivery, User.name)
        .join(User, User.id == Delivery.user_id)
        .where(*deliveries.in_state(state))
    )
    if before_id is not None:
        stmt = stmt.where(Delivery.id < before_id)
    stmt = stmt.order_by(Delivery.id.desc()).limit(limit)
    return [(row, name) for row, name in (await session.execute(stmt)).all()]


async def list_task_deliveries(session: AsyncSession, task: Task) -> Sequence[Delivery]:
    """The callbacks announcing `task`'s ends, and its batch's, oldest first."""
    about_task = Delivery.task_id == task.id
    stmt = select(Delivery).where(
        or_(about_task, Delivery.batch_id == task.batch_id) if task.batch_id else about_task
    )
    return (await session.execute(stmt.order_by(Delivery.id))).scalars().all()
