"""Every SQL statement the services run, as small named async functions.

None of them commits: the caller owns the transaction, so a task and its outbox
row always commit together.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import OutboxMessage, Task, TaskStatus, User
from shared.messages import OutboxEntry

# --- users -------------------------------------------------------------------


async def insert_user(session: AsyncSession, name: str, token_hash: str, is_admin: bool) -> User:
    user = User(name=name, token_hash=token_hash, is_admin=is_admin)
    session.add(user)
    await session.flush()
    return user


async def get_active_user_by_token_hash(session: AsyncSession, token_hash: str) -> User | None:
    stmt = select(User).where(User.token_hash == token_hash, User.revoked_at.is_(None))
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_users(session: AsyncSession) -> Sequence[User]:
    return (await session.execute(select(User).order_by(User.id))).scalars().all()


async def revoke_user(session: AsyncSession, name: str) -> bool:
    stmt = (
        update(User)
        .where(User.name == name, User.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(User.id)
    )
    return (await session.execute(stmt)).first() is not None


# --- tasks: create -----------------------------------------------------------

# One statement, one round trip: the task and its outbox row are inserted
# together, and the outbox row exists only if the task row was inserted (an
# idempotency-key conflict inserts neither). The outbox trigger sends the NOTIFY,
# which PostgreSQL delivers only on commit.
_CREATE_TASK_SQL = text(
    """
    WITH new_task AS (
        INSERT INTO tasks (id, user_id, target_domain, config, max_attempts,
                           idempotency_key, request_hash)
        VALUES (:task_id, :user_id, :target_domain, :config, :max_attempts,
                :idempotency_key, :request_hash)
        ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING *
    ), new_message AS (
        INSERT INTO outbox (message_id, actor, queue, payload, task_id)
        SELECT :message_id, :actor, :queue, :payload, id FROM new_task
    )
    SELECT * FROM new_task
    """
).bindparams(
    bindparam("task_id", type_=UUID(as_uuid=True)),
    bindparam("message_id", type_=UUID(as_uuid=True)),
    bindparam("config", type_=JSONB),
    bindparam("payload", type_=JSONB),
)


@dataclass(frozen=True)
class NewTask:
    user_id: int
    target_domain: str
    config: dict[str, Any]
    max_attempts: int
    idempotency_key: str | None = None
    request_hash: str | None = None


async def insert_task_with_message(
    session: AsyncSession, task_id: uuid.UUID, new: NewTask, entry: OutboxEntry
) -> Task | None:
    """Insert a pending task and its outbox row; None when the idempotency key already exists."""
    stmt = select(Task).from_statement(_CREATE_TASK_SQL)
    params = {
        "task_id": task_id,
        "user_id": new.user_id,
        "target_domain": new.target_domain,
        "config": new.config,
        "max_attempts": new.max_attempts,
        "idempotency_key": new.idempotency_key,
        "request_hash": new.request_hash,
        "message_id": entry.message_id,
        "actor": entry.actor,
        "queue": entry.queue,
        "payload": entry.payload,
    }
    return (await session.execute(stmt, params)).scalar_one_or_none()


async def get_task_by_idempotency_key(session: AsyncSession, user_id: int, key: str) -> Task | None:
    stmt = select(Task).where(Task.user_id == user_id, Task.idempotency_key == key)
    return (await session.execute(stmt)).scalar_one_or_none()


# --- tasks: read -------------------------------------------------------------


async def get_task(session: AsyncSession, task_id: uuid.UUID) -> Task | None:
    return await session.get(Task, task_id)


async def get_user_task(session: AsyncSession, user_id: int, task_id: uuid.UUID) -> Task | None:
    stmt = select(Task).where(Task.id == task_id, Task.user_id == user_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_user_tasks(
    session: AsyncSession,
    user_id: int,
    *,
    limit: int,
    status: str | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> Sequence[Task]:
    """Newest first; `before` is the (created_at, id) of the last row already seen."""
    stmt = select(Task).where(Task.user_id == user_id)
    if status is not None:
        stmt = stmt.where(Task.status == status)
    if before is not None:
        stmt = stmt.where(tuple_(Task.created_at, Task.id) < tuple_(*before))
    stmt = stmt.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit)
    return (await session.execute(stmt)).scalars().all()


# --- tasks: worker lifecycle -------------------------------------------------

_CLAIMABLE = (TaskStatus.PENDING.value, TaskStatus.QUEUED.value)


async def claim_task(
    session: AsyncSession, task_id: uuid.UUID, owner: str, lease_token: uuid.UUID, lease_s: float
) -> Task | None:
    """pending|queued -> running with a fresh lease; None if another claim or state won."""
    stmt = (
        update(Task)
        .where(Task.id == task_id, Task.status.in_(_CLAIMABLE))
        .values(
            status=TaskStatus.RUNNING.value,
            attempts=Task.attempts + 1,
            lease_owner=owner,
            lease_token=lease_token,
            lease_expires_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, lease_s),
            started_at=func.now(),
            updated_at=func.now(),
            error=None,
        )
        .returning(Task)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def finish_task(
    session: AsyncSession,
    task_id: uuid.UUID,
    lease_token: uuid.UUID,
    status: TaskStatus,
    result: dict[str, Any] | None,
    error: str | None,
) -> bool:
    """running -> a terminal state, only for the holder of the current lease."""
    stmt = (
        update(Task)
        .where(
            Task.id == task_id,
            Task.status == TaskStatus.RUNNING.value,
            Task.lease_token == lease_token,
        )
        .values(
            status=status.value,
            result=result,
            error=error,
            finished_at=func.now(),
            updated_at=func.now(),
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        )
        .returning(Task.id)
    )
    return (await session.execute(stmt)).first() is not None


# --- outbox ------------------------------------------------------------------


async def insert_message(session: AsyncSession, entry: OutboxEntry) -> None:
    """Append a message to the outbox in the caller's transaction."""
    session.add(
        OutboxMessage(
            message_id=entry.message_id,
            actor=entry.actor,
            queue=entry.queue,
            payload=entry.payload,
            task_id=entry.task_id,
        )
    )
    await session.flush()


@dataclass(frozen=True)
class ClaimedMessage:
    id: int
    message_id: uuid.UUID
    actor: str
    queue: str
    payload: dict[str, Any]
    task_id: uuid.UUID | None
    publish_attempts: int


async def claim_batch(session: AsyncSession, limit: int) -> list[ClaimedMessage]:
    """Lock up to `limit` due, unpublished rows that no other relay holds, oldest first."""
    stmt = (
        select(
            OutboxMessage.id,
            OutboxMessage.message_id,
            OutboxMessage.actor,
            OutboxMessage.queue,
            OutboxMessage.payload,
            OutboxMessage.task_id,
            OutboxMessage.publish_attempts,
        )
        .where(
            OutboxMessage.published_at.is_(None),
            OutboxMessage.dead_at.is_(None),
            OutboxMessage.available_at <= func.now(),
        )
        .order_by(OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = (await session.execute(stmt)).all()
    return [ClaimedMessage(*row) for row in rows]


# Rows and their tasks change together: a task becomes `queued` only if it is
# still `pending` (a worker may already have claimed it from the broker).
_MARK_PUBLISHED_SQL = text(
    """
    WITH published AS (
        UPDATE outbox SET published_at = now(), last_error = NULL
        WHERE id = ANY(:ids)
        RETURNING task_id
    )
    UPDATE tasks SET status = 'queued', queued_at = now(), updated_at = now()
    WHERE id IN (SELECT task_id FROM published) AND status = 'pending'
    """
)


async def mark_published(session: AsyncSession, ids: Sequence[int]) -> None:
    if ids:
        await session.execute(_MARK_PUBLISHED_SQL, {"ids": list(ids)})


async def record_publish_failure(
    session: AsyncSession, outbox_id: int, error: str, retry_in_s: float
) -> None:
    """Keep the row unpublished, count the attempt and push `available_at` back."""
    stmt = (
        update(OutboxMessage)
        .where(OutboxMessage.id == outbox_id)
        .values(
            publish_attempts=OutboxMessage.publish_attempts + 1,
            last_error=error,
            available_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, retry_in_s),
        )
    )
    await session.execute(stmt)


_MARK_DEAD_SQL = text(
    """
    WITH dead AS (
        UPDATE outbox SET dead_at = now(), last_error = :error,
                          publish_attempts = publish_attempts + 1
        WHERE id = :id
        RETURNING task_id
    )
    UPDATE tasks SET status = 'failed', error = :error, finished_at = now(), updated_at = now()
    WHERE id IN (SELECT task_id FROM dead) AND status IN ('pending', 'queued')
    """
)


async def mark_dead(session: AsyncSession, outbox_id: int, error: str) -> None:
    """Give up on a message that can never be published, and fail its task with the reason."""
    await session.execute(_MARK_DEAD_SQL, {"id": outbox_id, "error": error})


async def set_user_token(session: AsyncSession, name: str, token_hash: str, is_admin: bool) -> None:
    """Create the user, or give an existing one a new token (and un-revoke it)."""
    stmt = text(
        """
        INSERT INTO users (name, token_hash, is_admin) VALUES (:name, :token_hash, :is_admin)
        ON CONFLICT (name) DO UPDATE
        SET token_hash = EXCLUDED.token_hash, is_admin = EXCLUDED.is_admin, revoked_at = NULL
        """
    )
    await session.execute(stmt, {"name": name, "token_hash": token_hash, "is_admin": is_admin})
