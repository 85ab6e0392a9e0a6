"""Every SQL statement the services run, as small named async functions.

None of them commits: the caller owns the transaction, so a task and its outbox
row always commit together.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Float,
    Table,
    TextClause,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from shared import keys
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


async def get_user(session: AsyncSession, user_id: int) -> User | None:
    """The user with this id, revoked or not."""
    return await session.get(User, user_id)


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
_NOT_TERMINAL = (*_CLAIMABLE, TaskStatus.RUNNING.value)
_RUNNING = TaskStatus.RUNNING.value

# The worker's per-task statements are Core statements on the table, built once: the ORM's
# bulk-update bookkeeping and rebuilding each statement per call were most of their CPU cost.
# Bind names differ from column names: an UPDATE reserves those for its SET clause.
_TASKS = cast(Table, Task.__table__)
_tasks = _TASKS.c


def _claimable() -> ColumnElement[bool]:
    """Waiting to run, or running under a lease that expired (its worker died or stalled).

    Taking over an expired lease is safe because every later write of the old holder is
    conditional on its token, which the takeover replaces.
    """
    return or_(
        _tasks.status.in_(_CLAIMABLE),
        and_(_tasks.status == _RUNNING, _tasks.lease_expires_at < func.now()),
    )


def _seconds(value_s: float | BindParameter[float]) -> ColumnElement[Any]:
    return func.make_interval(0, 0, 0, 0, 0, 0, value_s)


@dataclass(frozen=True)
class TaskSighting:
    """A task as the worker's existence check saw it: its target, and whether a claim could
    take it at that moment (the claim itself decides again, conditionally)."""

    target_domain: str
    claimable: bool


_FIND_TASK = select(_tasks.target_domain, _claimable()).where(_tasks.id == bindparam("task_id"))


async def find_task(session: AsyncSession, task_id: uuid.UUID) -> TaskSighting | None:
    """The task if it is visible (committed); None otherwise."""
    row = (await session.execute(_FIND_TASK, {"task_id": task_id})).first()
    return TaskSighting(row[0], bool(row[1])) if row is not None else None


# The lock timeout is set in a subquery so that it applies before the lock is asked for, in
# one round trip; it lasts to the end of the transaction (`is_local`).
_LOCK_TARGET_SQL = text(
    """
    SELECT pg_advisory_xact_lock(:lock_class, hashtext(:domain))
    FROM (SELECT set_config('lock_timeout', :timeout_ms, true)) AS limited
    """
)


async def lock_target(session: AsyncSession, domain: str, timeout_s: float) -> None:
    """Serialise claims on one target domain until the transaction ends (politeness). Waiting
    longer than `timeout_s` raises (SQLSTATE 55P03, see `is_lock_timeout`): a claim stalled
    under the lock must not block every other claim of its target."""
    params = {
        "lock_class": keys.POLITENESS_LOCK_CLASS,
        "domain": domain,
        "timeout_ms": str(int(timeout_s * 1000)),
    }
    await session.execute(_LOCK_TARGET_SQL, params)


LOCK_NOT_AVAILABLE = "55P03"


def is_lock_timeout(exc: BaseException) -> bool:
    """True for a statement that gave up waiting for a lock (lock_timeout)."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) == LOCK_NOT_AVAILABLE


# Running tasks of `:domain` whose lease is still live, `:task_id` excluded.
_LIVE_SCANS = (
    select(func.count())
    .where(
        _tasks.target_domain == bindparam("domain"),
        _tasks.status == _RUNNING,
        _tasks.lease_expires_at >= func.now(),
        _tasks.id != bindparam("task_id"),
    )
    .scalar_subquery()
)


async def count_live_scans(session: AsyncSession, domain: str, other_than: uuid.UUID) -> int:
    """Running tasks of `domain` whose lease is still live, this task excluded."""
    stmt = select(_LIVE_SCANS)
    params = {"domain": domain, "task_id": other_than}
    return int((await session.execute(stmt, params)).scalar_one())


@dataclass(frozen=True)
class LeaseClaim:
    """Who claims a task and for how long."""

    owner: str
    lease_token: uuid.UUID
    lease_s: float


@dataclass(frozen=True)
class ClaimedTask:
    """What a worker needs of the task it has just claimed (now `running` under its lease)."""

    id: uuid.UUID
    target_domain: str
    config: dict[str, Any]
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime


_CLAIM = (
    update(_TASKS)
    .where(_tasks.id == bindparam("task_id"), _claimable(), _tasks.attempts < _tasks.max_attempts)
    .values(
        status=_RUNNING,
        attempts=_tasks.attempts + 1,
        lease_owner=bindparam("owner"),
        lease_token=bindparam("new_token", type_=UUID(as_uuid=True)),
        # From when the statement runs, not when its transaction began: time spent waiting
        # for the target's lock must not shorten the lease.
        lease_expires_at=func.clock_timestamp() + _seconds(bindparam("lease_s", type_=Float)),
        started_at=func.now(),
        updated_at=func.now(),
        error=None,
    )
    .returning(
        _tasks.id,
        _tasks.target_domain,
        _tasks.config,
        _tasks.attempts,
        _tasks.max_attempts,
        _tasks.created_at,
        _tasks.started_at,
    )
)
_CLAIM_POLITE = _CLAIM.where(bindparam("live_limit") > _LIVE_SCANS)


def _claim_params(task_id: uuid.UUID, claim: LeaseClaim) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "owner": claim.owner,
        "new_token": claim.lease_token,
        "lease_s": claim.lease_s,
    }


async def _claimed(session: AsyncSession, stmt: Any, params: dict[str, Any]) -> ClaimedTask | None:
    row = (await session.execute(stmt, params)).first()
    return ClaimedTask(*row) if row is not None else None


async def claim_task(
    session: AsyncSession, task_id: uuid.UUID, owner: str, lease_token: uuid.UUID, lease_s: float
) -> ClaimedTask | None:
    """Claimable -> running with a fresh lease, counting an attempt; None if another claim or
    state won, or the task has no attempt left (see `fail_exhausted_task`)."""
    params = _claim_params(task_id, LeaseClaim(owner, lease_token, lease_s))
    return await _claimed(session, _CLAIM, params)


async def claim_polite_task(
    session: AsyncSession,
    task_id: uuid.UUID,
    domain: str,
    live_limit: int,
    claim: LeaseClaim,
) -> ClaimedTask | None:
    """`claim_task` in the same statement as the politeness count: only while fewer than
    `live_limit` other scans of `domain` hold a live lease. Run it under `lock_target`, in a
    later statement than the lock (its snapshot then sees every claim committed before ours).
    None says nothing about why: the caller counts and claims again the slow way."""
    params = {**_claim_params(task_id, claim), "domain": domain, "live_limit": live_limit}
    return await _claimed(session, _CLAIM_POLITE, params)


# Only the holder of the current lease, while the task is still running, may write.
_HELD = and_(
    _tasks.id == bindparam("task_id"),
    _tasks.status == _RUNNING,
    _tasks.lease_token == bindparam("held_token", type_=UUID(as_uuid=True)),
)

# What every end of a run writes besides its status: when, and no lease any more.
_ENDED: dict[str, Any] = {
    "finished_at": func.now(),
    "updated_at": func.now(),
    "lease_owner": None,
    "lease_token": None,
    "lease_expires_at": None,
}

_FINISH = (
    update(_TASKS)
    .where(_HELD)
    .values(
        status=bindparam("new_status"),
        # none_as_null: no result is SQL NULL, not the JSON value null.
        result=bindparam("new_result", type_=JSONB(none_as_null=True)),
        error=bindparam("new_error"),
        **_ENDED,
    )
    .returning(_tasks.id)
)


async def finish_task(
    session: AsyncSession,
    task_id: uuid.UUID,
    lease_token: uuid.UUID,
    status: TaskStatus,
    result: dict[str, Any] | None,
    error: str | None,
) -> bool:
    """running -> a terminal state, only for the holder of the current lease."""
    params = {
        "task_id": task_id,
        "held_token": lease_token,
        "new_status": status.value,
        "new_result": result,
        "new_error": error,
    }
    return (await session.execute(_FINISH, params)).first() is not None


# A lease that has expired cannot be revived, even if nobody took the task over yet: from
# its expiry on, politeness counts the scan as dead and the leader may send it again.
_RENEW = (
    update(_TASKS)
    .where(_HELD, _tasks.lease_expires_at > func.clock_timestamp())
    .values(
        lease_expires_at=func.clock_timestamp() + _seconds(bindparam("lease_s", type_=Float)),
        updated_at=func.now(),
    )
    .returning(_tasks.id)
)


async def renew_lease(
    session: AsyncSession, task_id: uuid.UUID, lease_token: uuid.UUID, lease_s: float
) -> bool:
    """Push the lease forward; False once the token is no longer current, the lease has
    expired, or the task is no longer running (cancelled, taken over)."""
    params = {"task_id": task_id, "held_token": lease_token, "lease_s": lease_s}
    return (await session.execute(_RENEW, params)).first() is not None


async def fail_exhausted_task(session: AsyncSession, task_id: uuid.UUID) -> bool:
    """Fail a claimable task that has used all its attempts (e.g. its workers kept dying)."""
    stmt = (
        update(_TASKS)
        .where(_tasks.id == task_id, _claimable(), _tasks.attempts >= _tasks.max_attempts)
        .values(
            status=TaskStatus.FAILED.value,
            error=func.concat(
                "gave up after ",
                _tasks.attempts,
                " attempts",
                func.coalesce(literal(": ").concat(_tasks.error), ""),
            ),
            **_ENDED,
        )
        .returning(_tasks.id)
    )
    return (await session.execute(stmt)).first() is not None


def _redispatch_sql(task_update: str, *extra: BindParameter[Any]) -> TextClause:
    """`task_update` (an UPDATE ... RETURNING id) and, only if it matched, a new outbox row
    due after `:delay_s`: the state change and its message commit together or not at all."""
    return text(
        f"""
        WITH changed AS ({task_update})
        INSERT INTO outbox (message_id, actor, queue, payload, task_id, available_at)
        SELECT :message_id, :actor, :queue, :payload, id, now() + make_interval(secs => :delay_s)
        FROM changed
        RETURNING task_id
        """
    ).bindparams(
        bindparam("task_id", type_=UUID(as_uuid=True)),
        bindparam("message_id", type_=UUID(as_uuid=True)),
        bindparam("payload", type_=JSONB),
        bindparam("delay_s", type_=Float),
        *extra,
    )


_LEASE_CLEARED = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"

# Over the politeness limit: back to pending, to be published again after the delay.
_DEFER_SQL = _redispatch_sql(
    f"""
    UPDATE tasks SET status = 'pending', queued_at = NULL, updated_at = now(), {_LEASE_CLEARED}
    WHERE id = :task_id AND (status IN ('pending', 'queued')
                             OR (status = 'running' AND lease_expires_at < now()))
    RETURNING id
    """
)

# An infrastructure error during the run: the lease holder sends the task round again.
_REQUEUE_SQL = _redispatch_sql(
    f"""
    UPDATE tasks SET status = 'pending', error = :error, queued_at = NULL, updated_at = now(),
                     {_LEASE_CLEARED}
    WHERE id = :task_id AND status = 'running' AND lease_token = :lease_token
    RETURNING id
    """,
    bindparam("lease_token", type_=UUID(as_uuid=True)),
)


def _entry_params(entry: OutboxEntry, delay_s: float) -> dict[str, Any]:
    return {
        "message_id": entry.message_id,
        "actor": entry.actor,
        "queue": entry.queue,
        "payload": entry.payload,
        "delay_s": delay_s,
    }


async def defer_task(
    session: AsyncSession, task_id: uuid.UUID, entry: OutboxEntry, delay_s: float
) -> bool:
    """Claimable -> pending with `entry` due in `delay_s`; False if the task was not claimable."""
    params = {"task_id": task_id, **_entry_params(entry, delay_s)}
    return (await session.execute(_DEFER_SQL, params)).first() is not None


async def requeue_task(
    session: AsyncSession,
    task_id: uuid.UUID,
    lease_token: uuid.UUID,
    error: str,
    entry: OutboxEntry,
    delay_s: float,
) -> bool:
    """running -> pending with `entry` due in `delay_s`, only for the current lease holder."""
    params = {
        "task_id": task_id,
        "lease_token": lease_token,
        "error": error,
        **_entry_params(entry, delay_s),
    }
    return (await session.execute(_REQUEUE_SQL, params)).first() is not None


async def get_task_status(session: AsyncSession, task_id: uuid.UUID) -> str | None:
    stmt = select(Task.status).where(Task.id == task_id)
    return (await session.execute(stmt)).scalar_one_or_none()


# --- tasks: user transitions (retry, cancel) ---------------------------------

# The task goes back to a fresh start and its new message is written in the same
# statement, so a retry can never leave a pending task without a message.
_RETRY_TASK_SQL = text(
    f"""
    WITH retried AS (
        UPDATE tasks SET status = 'pending', attempts = 0, redispatches = 0, result = NULL,
                         error = NULL,
                         queued_at = NULL, started_at = NULL, finished_at = NULL,
                         updated_at = now(), {_LEASE_CLEARED}
        WHERE id = :task_id AND (CAST(:owner_id AS bigint) IS NULL OR user_id = :owner_id)
          AND status IN ('failed', 'cancelled')
        RETURNING *
    ), new_message AS (
        INSERT INTO outbox (message_id, actor, queue, payload, task_id)
        SELECT :message_id, :actor, :queue, :payload, id FROM retried
    )
    SELECT * FROM retried
    """
).bindparams(
    bindparam("task_id", type_=UUID(as_uuid=True)),
    bindparam("message_id", type_=UUID(as_uuid=True)),
    bindparam("payload", type_=JSONB),
)


async def retry_task(
    session: AsyncSession, owner_id: int | None, task_id: uuid.UUID, entry: OutboxEntry
) -> Task | None:
    """failed|cancelled -> pending with attempts reset and a new outbox row; None otherwise.
    `owner_id` None: whoever owns the task (an administrator acting)."""
    stmt = select(Task).from_statement(_RETRY_TASK_SQL)
    params = {
        "task_id": task_id,
        "owner_id": owner_id,
        "message_id": entry.message_id,
        "actor": entry.actor,
        "queue": entry.queue,
        "payload": entry.payload,
    }
    return (await session.execute(stmt, params)).scalar_one_or_none()


async def cancel_task(
    session: AsyncSession, owner_id: int | None, task_id: uuid.UUID
) -> Task | None:
    """Any non-terminal state -> cancelled; a running worker finds out at its next renewal.
    `owner_id` None: whoever owns the task (an administrator acting)."""
    owned = [Task.user_id == owner_id] if owner_id is not None else []
    stmt = (
        update(Task)
        .where(Task.id == task_id, *owned, Task.status.in_(_NOT_TERMINAL))
        .values(
            status=TaskStatus.CANCELLED.value,
            **_ENDED,
        )
        .returning(Task)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


# --- outbox ------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedMessage:
    id: int
    message_id: uuid.UUID
    actor: str
    queue: str
    payload: dict[str, Any]
    task_id: uuid.UUID | None
    publish_attempts: int
    age_s: float = 0.0  # since the row was written, on the database's clock


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
            func.extract("epoch", func.clock_timestamp() - OutboxMessage.created_at).cast(Float),
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
# still `pending` (a worker may already have claimed it from the broker), and only
# for its newest message (a worker may have deferred it, writing a newer row, before
# this batch committed). The task records which row it waits on, and the row the id
# the broker stores it under, so the leader can later ask the broker whether that
# message still exists. clock_timestamp(), not now(): the moment the broker took the
# batch, not when the claim's transaction began. The status test is written so that
# no index on status can serve it: with statistics from before a burst of new tasks,
# the planner would otherwise read every pending task for each batch instead of
# looking up the batch's tasks by primary key.
_MARK_PUBLISHED_SQL = text(
    """
    WITH published AS (
        UPDATE outbox o SET published_at = clock_timestamp(), last_error = NULL,
                            broker_message_id = sent.broker_message_id
        FROM unnest(CAST(:ids AS bigint[]), CAST(:broker_ids AS text[]))
             AS sent(id, broker_message_id)
        WHERE o.id = sent.id
        RETURNING o.id, o.task_id
    )
    UPDATE tasks t SET status = 'queued', queued_at = now(), queued_outbox_id = published.id,
                       updated_at = now()
    FROM published
    WHERE t.id = published.task_id AND (t.status = 'pending') IS TRUE
      AND NOT EXISTS (SELECT 1 FROM outbox newer
                      WHERE newer.task_id = published.task_id AND newer.id > published.id)
    """
)


@dataclass(frozen=True)
class PublishedMessage:
    outbox_id: int
    broker_message_id: str


async def mark_published(session: AsyncSession, published: Sequence[PublishedMessage]) -> None:
    """Mark rows published under their broker ids, and their tasks queued on them."""
    if published:
        params = {
            "ids": [p.outbox_id for p in published],
            "broker_ids": [p.broker_message_id for p in published],
        }
        await session.execute(_MARK_PUBLISHED_SQL, params)


_RECORD_FAILURE_SQL = text(
    """
    UPDATE outbox SET publish_attempts = publish_attempts + 1, last_error = :error,
                      available_at = now() + make_interval(secs => :retry_in_s)
    WHERE id = :id
    """
).bindparams(bindparam("retry_in_s", type_=Float))


@dataclass(frozen=True)
class PublishFailure:
    outbox_id: int
    error: str
    retry_in_s: float


async def record_publish_failures(
    session: AsyncSession, failures: Sequence[PublishFailure]
) -> None:
    """Keep each row unpublished, count the attempt and push `available_at` back, in one
    round trip."""
    if failures:
        params = [
            {"id": f.outbox_id, "error": f.error, "retry_in_s": f.retry_in_s} for f in failures
        ]
        await session.execute(_RECORD_FAILURE_SQL, params)


# Only rows that failed to publish (publish_attempts > 0): a row deliberately
# written with a later available_at (a deferred task) keeps its time.
_RELEASE_BACKOFF_SQL = text(
    """
    UPDATE outbox SET available_at = now()
    WHERE published_at IS NULL AND dead_at IS NULL
      AND publish_attempts > 0 AND available_at > now()
    """
)


async def release_backoff(session: AsyncSession) -> int:
    """Make every row backing off after a failed publish due now (the broker is back)."""
    result = await session.execute(_RELEASE_BACKOFF_SQL)
    return int(result.rowcount)  # type: ignore[attr-defined]


async def insert_messages(session: AsyncSession, entries: Sequence[OutboxEntry]) -> None:
    """Append many messages in the caller's transaction, in as few statements as possible."""
    session.add_all(
        OutboxMessage(
            message_id=e.message_id,
            actor=e.actor,
            queue=e.queue,
            payload=e.payload,
            task_id=e.task_id,
        )
        for e in entries
    )
    await session.flush()


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


# --- maintenance: leader lock, orphan re-dispatch, pruning -------------------
# Run by the relay leader's jobs and by `scanctl cleanup-orphaned` through
# shared.maintenance; each statement touches a bounded batch of rows.


async def ping(connection: AsyncConnection) -> None:
    await connection.execute(text("SELECT 1"))


async def try_advisory_lock(connection: AsyncConnection, key: int) -> bool:
    """Take the session-level advisory lock `key` if it is free; it lasts until released or the
    connection ends (so a dead holder's lock goes with its connection)."""
    stmt = text("SELECT pg_try_advisory_lock(:key)")
    return bool((await connection.execute(stmt, {"key": key})).scalar_one())


async def holds_advisory_lock(connection: AsyncConnection, key: int) -> bool:
    # A bigint key shows in pg_locks as its high and low 32 bits, objsubid 1.
    stmt = text(
        """
        SELECT EXISTS (SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                         AND classid::bigint = :high AND objid::bigint = :low AND objsubid = 1)
        """
    )
    params = {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF}
    return bool((await connection.execute(stmt, params)).scalar_one())


async def advisory_unlock(connection: AsyncConnection, key: int) -> None:
    await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


# Small batches, rows another session holds skipped: pruning never waits on, or
# holds up, the relay (which only ever locks unpublished rows anyway).
_PRUNE_PUBLISHED_SQL = text(
    """
    DELETE FROM outbox
    WHERE id IN (SELECT id FROM outbox
                 WHERE published_at < now() - make_interval(secs => :retention_s)
                 ORDER BY published_at LIMIT :limit FOR UPDATE SKIP LOCKED)
    """
).bindparams(bindparam("retention_s", type_=Float))


async def prune_published(session: AsyncSession, retention_s: float, limit: int) -> int:
    """Delete up to `limit` rows published more than `retention_s` ago; returns how many."""
    params = {"retention_s": retention_s, "limit": limit}
    result = await session.execute(_PRUNE_PUBLISHED_SQL, params)
    return int(result.rowcount)  # type: ignore[attr-defined]


async def count_prunable(session: AsyncSession, retention_s: float) -> int:
    stmt = text(
        "SELECT count(*) FROM outbox"
        " WHERE published_at < now() - make_interval(secs => :retention_s)"
    ).bindparams(bindparam("retention_s", type_=Float))
    return int((await session.execute(stmt, {"retention_s": retention_s})).scalar_one())


# --- operations: health facts, inspection, replay, expiry (scanctl, /ops) ----


async def count_tasks_by_status(session: AsyncSession) -> dict[str, int]:
    stmt = select(Task.status, func.count()).group_by(Task.status)
    return {row[0]: row[1] for row in (await session.execute(stmt)).all()}


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


async def summarize_outbox(session: AsyncSession) -> OutboxSummary:
    backlog, oldest_age_s = (await session.execute(_OUTBOX_BACKLOG_SQL)).one()
    dead_stmt = (
        select(func.count()).select_from(OutboxMessage).where(OutboxMessage.dead_at.is_not(None))
    )
    dead = (await session.execute(dead_stmt)).scalar_one()
    return OutboxSummary(backlog, oldest_age_s, dead)


async def list_tasks_with_owner(
    session: AsyncSession, *, limit: int, status: str | None = None, user_name: str | None = None
) -> Sequence[tuple[Task, str]]:
    """Newest first, across users, each with its owner's name."""
    stmt = select(Task, User.name).join(User, User.id == Task.user_id)
    if status is not None:
        stmt = stmt.where(Task.status == status)
    if user_name is not None:
        stmt = stmt.where(User.name == user_name)
    stmt = stmt.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit)
    return [(task, name) for task, name in (await session.execute(stmt)).all()]


async def get_task_with_owner(session: AsyncSession, task_id: uuid.UUID) -> tuple[Task, str] | None:
    stmt = select(Task, User.name).join(User, User.id == Task.user_id).where(Task.id == task_id)
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


@dataclass(frozen=True)
class ReplayedMessage:
    id: int
    task_id: uuid.UUID | None
    task_revived: bool


# A dead row's task goes back to pending only if that row is what failed it: the
# task is failed with the row's error and no newer message exists for it (a retry
# since then owns the task).
_REPLAY_DEAD_SQL = text(
    """
    WITH replayed AS (
        UPDATE outbox SET dead_at = NULL, available_at = now(), publish_attempts = 0
        WHERE dead_at IS NOT NULL AND (CAST(:all_dead AS boolean) OR id = ANY(:ids))
        RETURNING id, task_id, last_error
    ), revived AS (
        UPDATE tasks SET status = 'pending', error = NULL, finished_at = NULL, updated_at = now()
        FROM replayed
        WHERE tasks.id = replayed.task_id AND tasks.status = 'failed'
          AND tasks.error IS NOT DISTINCT FROM replayed.last_error
          AND NOT EXISTS (SELECT 1 FROM outbox newer
                          WHERE newer.task_id = replayed.task_id AND newer.id > replayed.id)
        RETURNING tasks.id
    )
    SELECT id, task_id, task_id IN (SELECT id FROM revived) FROM replayed ORDER BY id
    """
)


async def replay_dead_messages(
    session: AsyncSession, ids: Sequence[int] | None
) -> list[ReplayedMessage]:
    """Dead rows (`ids`, or all if None) become due again; tasks they failed go back to pending."""
    params = {"all_dead": ids is None, "ids": list(ids or [])}
    rows = (await session.execute(_REPLAY_DEAD_SQL, params)).all()
    return [ReplayedMessage(row[0], row[1], bool(row[2])) for row in rows]


async def notify_outbox(session: AsyncSession, channel: str) -> None:
    """Wake the relays on commit; the outbox trigger only fires on INSERT."""
    await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})


# Small batches, rows another session holds skipped: a large expiry never holds many
# row locks, nor waits on a worker.
_EXPIRE_IDEMPOTENCY_SQL = text(
    """
    UPDATE tasks SET idempotency_key = NULL
    WHERE id IN (SELECT id FROM tasks
                 WHERE idempotency_key IS NOT NULL
                   AND created_at < now() - make_interval(secs => :older_than_s)
                 LIMIT :batch FOR UPDATE SKIP LOCKED)
    """
).bindparams(bindparam("older_than_s", type_=Float))


async def count_expired_idempotency_keys(session: AsyncSession, older_than_s: float) -> int:
    stmt = text(
        "SELECT count(*) FROM tasks WHERE idempotency_key IS NOT NULL"
        " AND created_at < now() - make_interval(secs => :older_than_s)"
    ).bindparams(bindparam("older_than_s", type_=Float))
    return int((await session.execute(stmt, {"older_than_s": older_than_s})).scalar_one())


async def expire_idempotency_keys(session: AsyncSession, older_than_s: float, batch: int) -> int:
    """Clear up to `batch` idempotency keys of tasks created over `older_than_s` ago."""
    params = {"older_than_s": older_than_s, "batch": batch}
    result = await session.execute(_EXPIRE_IDEMPOTENCY_SQL, params)
    return int(result.rowcount)  # type: ignore[attr-defined]
