"""The task aggregate as its owner sees it: create (with its outbox row), read, retry, cancel.
None of them commits.

Idiom: statements built once at import. Every write (create, retry, cancel) is `text()`
mapped back onto `Task`: create and retry are PostgreSQL data-modifying CTEs that write the
task and its outbox row in one statement, and all three share the predicates and the outbox
insert with the worker's and the relay's statements. Reads are SQLAlchemy expression
language; the user's task list is built per call, as its filters vary.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, text, tuple_
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import outbox, predicates
from shared.db.models import Task, TaskStatus
from shared.messages import OutboxEntry

# --- create ------------------------------------------------------------------

# One statement, one round trip: the task and its outbox row are inserted
# together, and the outbox row exists only if the task row was inserted (an
# idempotency-key conflict inserts neither). The caller hints the relays after the
# commit (shared/wakeups.py).
_CREATE_TASK = select(Task).from_statement(
    text(
        f"""
        WITH new_task AS (
            INSERT INTO tasks (id, user_id, target_domain, config, max_attempts,
                               idempotency_key, request_hash, callback_url)
            VALUES (:task_id, :user_id, :target_domain, :config, :max_attempts,
                    :idempotency_key, :request_hash, :callback_url)
            ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING *
        ), new_message AS ({outbox.insert_entries_sql("new_task")})
        SELECT * FROM new_task
        """
    ).bindparams(
        bindparam("task_id", type_=UUID(as_uuid=True)),
        bindparam("config", type_=JSONB),
        *outbox.ENTRY_BINDS,
    )
)


@dataclass(frozen=True)
class NewTask:
    user_id: int
    target_domain: str
    config: dict[str, Any]
    max_attempts: int
    idempotency_key: str | None = None
    request_hash: str | None = None
    # Where to POST when the task ends (checked by the API before it gets here).
    callback_url: str | None = None


async def insert_task_with_message(
    session: AsyncSession, task_id: uuid.UUID, new: NewTask, entry: OutboxEntry
) -> Task | None:
    """Insert a pending task and its outbox row; None when the idempotency key already exists."""
    params = {
        "task_id": task_id,
        "user_id": new.user_id,
        "target_domain": new.target_domain,
        "config": new.config,
        "max_attempts": new.max_attempts,
        "idempotency_key": new.idempotency_key,
        "request_hash": new.request_hash,
        "callback_url": new.callback_url,
        **outbox.entries_params([entry]),
    }
    return (await session.execute(_CREATE_TASK, params)).scalar_one_or_none()


_BY_IDEMPOTENCY_KEY = select(Task).where(
    Task.user_id == bindparam("user_id"), Task.idempotency_key == bindparam("key")
)


async def get_task_by_idempotency_key(session: AsyncSession, user_id: int, key: str) -> Task | None:
    params = {"user_id": user_id, "key": key}
    return (await session.execute(_BY_IDEMPOTENCY_KEY, params)).scalar_one_or_none()


# --- read --------------------------------------------------------------------


async def get_task(session: AsyncSession, task_id: uuid.UUID) -> Task | None:
    return await session.get(Task, task_id)


# Rows read afresh even into a session that holds the task already: a waiting request reads
# the same task again and again on one session.
_USER_TASK = (
    select(Task)
    .where(Task.id == bindparam("task_id"), Task.user_id == bindparam("uid"))
    .execution_options(populate_existing=True)
)


async def get_user_task(session: AsyncSession, user_id: int, task_id: uuid.UUID) -> Task | None:
    params = {"task_id": task_id, "uid": user_id}
    return (await session.execute(_USER_TASK, params)).scalar_one_or_none()


_STATUS = select(Task.status).where(Task.id == bindparam("task_id"))


async def get_task_status(session: AsyncSession, task_id: uuid.UUID) -> str | None:
    return (await session.execute(_STATUS, {"task_id": task_id})).scalar_one_or_none()


async def list_user_tasks(
    session: AsyncSession,
    user_id: int,
    *,
    limit: int,
    status: str | None = None,
    batch_id: uuid.UUID | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> Sequence[Task]:
    """Newest first; `before` is the (created_at, id) of the last row already seen."""
    stmt = select(Task).where(Task.user_id == user_id)
    if status is not None:
        stmt = stmt.where(Task.status == status)
    if batch_id is not None:
        stmt = stmt.where(Task.batch_id == batch_id)
    if before is not None:
        stmt = stmt.where(tuple_(Task.created_at, Task.id) < tuple_(*before))
    stmt = stmt.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit)
    return (await session.execute(stmt)).scalars().all()


# --- user transitions (retry, cancel) ------------------------------------------

# The task goes back to a fresh start and its new message is written in the same
# statement, so a retry can never leave a pending task without a message.
# `:owner_id` NULL: whoever owns the task (an administrator acting).
_RETRY_TASK = select(Task).from_statement(
    text(
        f"""
        WITH retried AS (
            UPDATE tasks SET status = {predicates.PENDING}, attempts = 0, redispatches = 0,
                             result = NULL, error = NULL,
                             queued_at = NULL, started_at = NULL, finished_at = NULL,
                             updated_at = now(), {predicates.LEASE_CLEARED}
            WHERE id = :task_id AND (CAST(:owner_id AS bigint) IS NULL OR user_id = :owner_id)
              AND status IN ({predicates.sql(TaskStatus.FAILED, TaskStatus.CANCELLED)})
            RETURNING *
        ), new_message AS ({outbox.insert_entries_sql("retried")})
        SELECT * FROM retried
        """
    ).bindparams(bindparam("task_id", type_=UUID(as_uuid=True)), *outbox.ENTRY_BINDS)
)


async def retry_task(
    session: AsyncSession, owner_id: int | None, task_id: uuid.UUID, entry: OutboxEntry
) -> Task | None:
    """failed|cancelled -> pending with attempts reset and a new outbox row; None otherwise.
    `owner_id` None: whoever owns the task (an administrator acting)."""
    params = {"task_id": task_id, "owner_id": owner_id, **outbox.entries_params([entry])}
    return (await session.execute(_RETRY_TASK, params)).scalar_one_or_none()


# Ending a task fires the deliveries trigger `task_finished_callbacks` (revision 0005,
# docs/design.md "Completion callbacks"): its callback rows are written in this transaction.
_CANCELLED = (
    f"status = {predicates.CANCELLED}, finished_at = now(), updated_at = now(), "
    f"{predicates.LEASE_CLEARED}"
)
_CANCEL_TASK = select(Task).from_statement(
    text(
        f"""
        UPDATE tasks SET {_CANCELLED}
        WHERE id = :task_id AND (CAST(:owner_id AS bigint) IS NULL OR user_id = :owner_id)
          AND {predicates.NOT_ENDED}
        RETURNING *
        """
    ).bindparams(bindparam("task_id", type_=UUID(as_uuid=True)))
)


async def cancel_task(
    session: AsyncSession, owner_id: int | None, task_id: uuid.UUID
) -> Task | None:
    """Any non-terminal state -> cancelled; a running worker finds out at its next renewal.
    `owner_id` None: whoever owns the task (an administrator acting)."""
    params = {"task_id": task_id, "owner_id": owner_id}
    return (await session.execute(_CANCEL_TASK, params)).scalar_one_or_none()


# Every task of the batch that has not ended, in one statement; the owner is the batch's.
_CANCEL_BATCH = text(
    f"""
    UPDATE tasks SET {_CANCELLED}
    WHERE batch_id = :batch_id AND (CAST(:owner_id AS bigint) IS NULL OR user_id = :owner_id)
      AND {predicates.NOT_ENDED}
    """
).bindparams(bindparam("batch_id", type_=UUID(as_uuid=True)))


async def cancel_batch_tasks(
    session: AsyncSession, owner_id: int | None, batch_id: uuid.UUID
) -> int:
    """Cancel the batch's tasks that have not ended; returns how many. Running workers find
    out at their next renewal. `owner_id` None: whoever owns the batch (an administrator)."""
    result = await session.execute(_CANCEL_BATCH, {"batch_id": batch_id, "owner_id": owner_id})
    return int(getattr(result, "rowcount", 0) or 0)


# --- waiting -----------------------------------------------------------------

# Of the ids waited on (tasks and batches alike), those that have ended: a task in a
# terminal state, or a batch none of whose tasks is still going. One statement for all the
# waits of a process, so the poll that backs the finish hints costs one query an interval
# however many requests wait.
_ENDED_AMONG = text(
    f"""
    SELECT id FROM tasks WHERE id = ANY(:ids) AND NOT ({predicates.NOT_ENDED})
    UNION ALL
    SELECT batch_id FROM tasks WHERE batch_id = ANY(:ids)
    GROUP BY batch_id HAVING NOT bool_or({predicates.NOT_ENDED})
    """
).bindparams(bindparam("ids", type_=ARRAY(UUID(as_uuid=True))))


async def ended_among(session: AsyncSession, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """The ids among `ids` of tasks that have ended and of batches whose tasks all have."""
    if not ids:
        return set()
    rows = await session.execute(_ENDED_AMONG, {"ids": list(ids)})
    return {row[0] for row in rows}
