"""Operations' reads across users: tasks by status and with their owners, the outbox's
backlog and rows, for `scanctl`, `/ops` and the health summary. Nothing here writes.

Idiom: SQLAlchemy expression language on the models, built once at import or, where the
filters vary, per call from a base built once;
the one exception is the backlog aggregate, `text()` because its `FILTER` and `CASE` over a
partial index read clearer as SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import TASK_LANE_SQL, Batch, Lane, OutboxMessage, Task, User

_BY_STATUS = select(Task.status, func.count()).group_by(Task.status)


async def count_tasks_by_status(session: AsyncSession) -> dict[str, int]:
    return {row[0]: row[1] for row in (await session.execute(_BY_STATUS)).all()}


@dataclass(frozen=True)
class OutboxSummary:
    backlog: int
    oldest_unpublished_age_s: float | None
    dead: int


# Both counts read only a partial index (of unpublished rows, of dead rows), so a
# health probe costs the same however many published rows the table keeps. The age
# counts only rows that are due or failed to publish: a deliberately deferred row is
# not late until its time has come (and then it is late from that time).
_OUTBOX_BACKLOG_SQL = text(
    """
    SELECT count(*),
           EXTRACT(EPOCH FROM now() - min(CASE WHEN publish_attempts > 0 THEN created_at
                                               ELSE available_at END)
                   FILTER (WHERE available_at <= now() OR publish_attempts > 0))::float8
    FROM outbox WHERE published_at IS NULL AND dead_at IS NULL
    """
)
_DEAD_COUNT = (
    select(func.count()).select_from(OutboxMessage).where(OutboxMessage.dead_at.is_not(None))
)


async def summarize_outbox(session: AsyncSession) -> OutboxSummary:
    backlog, oldest_age_s = (await session.execute(_OUTBOX_BACKLOG_SQL)).one()
    dead = (await session.execute(_DEAD_COUNT)).scalar_one()
    return OutboxSummary(backlog, oldest_age_s, dead)


@dataclass(frozen=True)
class ClientDispatch:
    """One client's lane: rows waiting in the outbox, and messages in the broker (its
    window's use: published, not yet taken by a worker)."""

    client: str
    lane: str
    backlog: int
    in_broker: int


# Both sides read partial indexes (ix_outbox_backlog, ix_tasks_in_broker). Rows written
# without a task belong to no client (user 0).
_CLIENT_DISPATCH_SQL = text(
    f"""
    WITH backlog AS (
        SELECT user_id, lane, count(*) AS backlog FROM outbox
        WHERE published_at IS NULL AND dead_at IS NULL GROUP BY user_id, lane
    ), in_broker AS (
        SELECT user_id, {TASK_LANE_SQL} AS lane, count(*) AS in_broker FROM tasks
        WHERE status = 'queued' GROUP BY 1, 2
    )
    SELECT coalesce(users.name, '(no client)'), lane,
           coalesce(backlog.backlog, 0), coalesce(in_broker.in_broker, 0)
    FROM backlog FULL JOIN in_broker USING (user_id, lane)
    LEFT JOIN users ON users.id = user_id
    ORDER BY 3 DESC, 4 DESC, 1, 2 LIMIT :limit
    """
)


async def client_dispatch(session: AsyncSession, limit: int) -> list[ClientDispatch]:
    """The `limit` client lanes with the longest backlog (then the most in the broker)."""
    rows = (await session.execute(_CLIENT_DISPATCH_SQL, {"limit": limit})).all()
    return [ClientDispatch(name, Lane(lane).name.lower(), b, q) for name, lane, b, q in rows]


_WITH_OWNER = select(Task, User.name).join(User, User.id == Task.user_id)


async def list_tasks_with_owner(
    session: AsyncSession, *, limit: int, status: str | None = None, user_name: str | None = None
) -> Sequence[tuple[Task, str]]:
    """Newest first, across users, each with its owner's name."""
    stmt = _WITH_OWNER
    if status is not None:
        stmt = stmt.where(Task.status == status)
    if user_name is not None:
        stmt = stmt.where(User.name == user_name)
    stmt = stmt.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit)
    return [(task, name) for task, name in (await session.execute(stmt)).all()]


async def get_task_with_owner(session: AsyncSession, task_id: uuid.UUID) -> tuple[Task, str] | None:
    stmt = _WITH_OWNER.where(Task.id == task_id)
    row = (await session.execute(stmt)).one_or_none()
    return (row[0], row[1]) if row else None


async def get_task_statuses(
    session: AsyncSession, task_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The status of each task that exists among `task_ids`."""
    stmt = select(Task.id, Task.status).where(Task.id.in_(task_ids))
    return {row[0]: row[1] for row in (await session.execute(stmt)).all()}


async def list_outbox(
    session: AsyncSession, *, limit: int, state: str | None = None
) -> Sequence[OutboxMessage]:
    """Newest first; `state` is unpublished, dead or published (None: every row)."""
    stmt = select(OutboxMessage)
    if state == "unpublished":
        stmt = stmt.where(OutboxMessage.published_at.is_(None), OutboxMessage.dead_at.is_(None))
    elif state == "dead":
        stmt = stmt.where(OutboxMessage.dead_at.is_not(None))
    elif state == "published":
        stmt = stmt.where(OutboxMessage.published_at.is_not(None))
    stmt = stmt.order_by(OutboxMessage.id.desc()).limit(limit)
    return (await session.execute(stmt)).scalars().all()


async def get_outbox_message(session: AsyncSession, outbox_id: int) -> OutboxMessage | None:
    return await session.get(OutboxMessage, outbox_id)


_BATCH_WITH_OWNER = select(Batch, User.name).join(User, User.id == Batch.user_id)


async def list_batches_with_owner(
    session: AsyncSession, *, limit: int, user_name: str | None = None
) -> Sequence[tuple[Batch, str]]:
    """Batches newest first, across users, each with its owner's name."""
    stmt = _BATCH_WITH_OWNER
    if user_name is not None:
        stmt = stmt.where(User.name == user_name)
    stmt = stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
    return [(batch, name) for batch, name in (await session.execute(stmt)).all()]


async def get_batch_with_owner(
    session: AsyncSession, batch_id: uuid.UUID
) -> tuple[Batch, str] | None:
    row = (await session.execute(_BATCH_WITH_OWNER.where(Batch.id == batch_id))).one_or_none()
    return (row[0], row[1]) if row else None
