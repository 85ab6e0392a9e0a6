"""The worker's statements on a task: see it, lock its target, claim it under a lease,
finish, defer or requeue it (renewals: `leases`). Every write after the claim is fenced by the
lease token. None of them commits.

Idiom: Core statements on the table, built once at import: the ORM's bulk-update bookkeeping
and rebuilding each statement per call were most of their CPU cost. Two kinds of statement
are `text()` instead, where PostgreSQL-specific SQL reads clearer: the target lock
(`set_config` and an advisory lock in one round trip) and the two that write an outbox row
with the state change (data-modifying CTEs). Bind names differ from column names: an UPDATE
reserves those for its SET clause.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    Boolean,
    ColumnElement,
    Float,
    Table,
    TextClause,
    and_,
    bindparam,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from shared import keys
from shared.db import outbox, predicates
from shared.db.models import Task, TaskStatus
from shared.messages import OutboxEntry

_TASKS = cast(Table, Task.__table__)
_tasks = _TASKS.c
_RUNNING = TaskStatus.RUNNING.value
# See predicates.CLAIMABLE; as a Core condition on the one table in scope.
_CLAIMABLE = literal_column(predicates.CLAIMABLE, Boolean)


def _seconds(value_s: float | BindParameter[float]) -> ColumnElement[Any]:
    return func.make_interval(0, 0, 0, 0, 0, 0, value_s)


@dataclass(frozen=True)
class TaskSighting:
    """A task as the worker's existence check saw it: its target, and whether a claim could
    take it at that moment (the claim itself decides again, conditionally)."""

    target_domain: str
    claimable: bool


_FIND_TASK = select(_tasks.target_domain, _CLAIMABLE).where(_tasks.id == bindparam("task_id"))


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
    batch_id: uuid.UUID | None = None
    # Its end may write a delivery (it has a callback URL, or its batch may have one).
    may_call_back: bool = False


_CLAIM = (
    update(_TASKS)
    .where(_tasks.id == bindparam("task_id"), _CLAIMABLE, _tasks.attempts < _tasks.max_attempts)
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
        _tasks.batch_id,
        or_(_tasks.callback_url.is_not(None), _tasks.batch_id.is_not(None)),
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

# What every end of a run writes besides its status: when, and no lease any more. An end
# fires the deliveries trigger `task_finished_callbacks` (docs/design.md "Completion
# callbacks"): the task's callback rows are written in the same transaction.
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


_FAIL_EXHAUSTED = (
    update(_TASKS)
    .where(_tasks.id == bindparam("task_id"), _CLAIMABLE, _tasks.attempts >= _tasks.max_attempts)
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


async def fail_exhausted_task(session: AsyncSession, task_id: uuid.UUID) -> bool:
    """Fail a claimable task that has used all its attempts (e.g. its workers kept dying)."""
    return (await session.execute(_FAIL_EXHAUSTED, {"task_id": task_id})).first() is not None


def _redispatch_sql(task_update: str, *extra: BindParameter[Any]) -> TextClause:
    """`task_update` (an UPDATE ... RETURNING id, user_id, batch_id) and, only if it matched,
    a new outbox row due after `:delay_s`: the state change and its message commit together
    or not at all."""
    due = "now() + make_interval(secs => :delay_s)"
    return text(
        f"""
        WITH changed AS ({task_update})
        {outbox.insert_entries_sql("changed", due)}
        RETURNING task_id
        """
    ).bindparams(
        bindparam("task_id", type_=UUID(as_uuid=True)),
        bindparam("delay_s", type_=Float),
        *outbox.ENTRY_BINDS,
        *extra,
    )


# Over the politeness limit: back to pending, to be published again after the delay.
_DEFER_SQL = _redispatch_sql(
    f"""
    UPDATE tasks SET status = {predicates.PENDING}, queued_at = NULL, updated_at = now(),
                     {predicates.LEASE_CLEARED}
    WHERE id = :task_id AND {predicates.CLAIMABLE}
    RETURNING id, user_id, batch_id
    """
)

# An infrastructure error during the run: the lease holder sends the task round again.
_REQUEUE_SQL = _redispatch_sql(
    f"""
    UPDATE tasks SET status = {predicates.PENDING}, error = :error, queued_at = NULL,
                     updated_at = now(), {predicates.LEASE_CLEARED}
    WHERE id = :task_id AND status = {predicates.RUNNING} AND lease_token = :lease_token
    RETURNING id, user_id, batch_id
    """,
    bindparam("lease_token", type_=UUID(as_uuid=True)),
)


def _entry_params(entry: OutboxEntry, delay_s: float) -> dict[str, Any]:
    return {**outbox.entries_params([entry]), "delay_s": delay_s}


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
