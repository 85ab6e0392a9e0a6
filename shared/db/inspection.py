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

from shared.db.models import OutboxMessage, Task, User

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
