"""The worker's statements on a task: see it, lock its target, claim 1..N tasks under leases
of their own, fail one out of attempts, defer or requeue one (its end: `completions`; lease
renewals: `leases`). Every write after the claim is fenced by the lease token. None of them
commits.

Idiom: `text()` statements built once at import, statuses and shared conditions from
`predicates`. The claim is one statement for any number of tasks (`claim_tasks`): the
worker's batches and its single claim both run it, so the columns a claim sets are written
in one place.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Float, TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession

from shared import keys
from shared.db import outbox, predicates
from shared.messages import OutboxEntry


@dataclass(frozen=True)
class TaskSighting:
    """A task as the worker's existence check saw it: its target, and whether a claim could
    take it at that moment (the claim itself decides again, conditionally)."""

    target_domain: str
    claimable: bool


_FIND_TASK = text(f"SELECT target_domain, {predicates.CLAIMABLE} FROM tasks WHERE id = :task_id")


async def find_task(session: AsyncSession, task_id: uuid.UUID) -> TaskSighting | None:
    """The task if it is visible (committed); None otherwise."""
    row = (await session.execute(_FIND_TASK, {"task_id": task_id})).first()
    return TaskSighting(row[0], bool(row[1])) if row is not None else None


# The lock timeout is set first (LATERAL runs the locks after it) and lasts to the end of the
# transaction (`is_local`), so it also bounds a claim's wait for a row. The targets' keys are
# locked in ascending order (`count` consumes the ordered subquery row by row), so claims never
# wait on each other's target locks in a cycle.
_LOCK_TARGETS = text(
    """
    SELECT locked.n
    FROM (SELECT set_config('lock_timeout', :timeout_ms, true) AS timeout) AS limited
    CROSS JOIN LATERAL (
        SELECT count(pg_advisory_xact_lock(:lock_class, targets.key)) AS n
        FROM (
            SELECT DISTINCT hashtext(target_domain) AS key
            FROM tasks
            WHERE id = ANY(CAST(:ids AS uuid[])) AND limited.timeout IS NOT NULL
            ORDER BY key
        ) AS targets
    ) AS locked
    """
)


async def lock_targets(
    session: AsyncSession, task_ids: Sequence[uuid.UUID], timeout_s: float
) -> None:
    """Serialise claims on the targets of every visible task of `task_ids` until the
    transaction ends (politeness). Waiting longer than `timeout_s` for a lock raises
    (SQLSTATE 55P03, see `is_lock_timeout`): a claim stalled under a target's lock must not
    block every other claim of that target."""
    params = {
        "ids": list(task_ids),
        "lock_class": keys.POLITENESS_LOCK_CLASS,
        "timeout_ms": str(int(timeout_s * 1000)),
    }
    await session.execute(_LOCK_TARGETS, params)


LOCK_NOT_AVAILABLE = "55P03"


def is_lock_timeout(exc: BaseException) -> bool:
    """True for a statement that gave up waiting for a lock (lock_timeout)."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) == LOCK_NOT_AVAILABLE


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


# A claimed task and the token of its lease, which fences every later write of the run.
Claim = tuple[ClaimedTask, uuid.UUID]


def _claim_sql(row_lock: str) -> TextClause:
    """The claim, taking the rows of `locked` with `row_lock`.

    Unqualified columns are those of `tasks AS t` (the CTEs name theirs apart). `locked`
    holds every row it returns, tested again on its newest version, so the UPDATE need not
    test claimability a second time. `live` counts the scans of each target still under a
    live lease and `nth` this statement's own claims of it, so a target's claims together
    stay within `:live_limit`. Run it under `lock_targets`, in a later statement (its
    snapshot then sees every claim of those targets committed before ours). The lease runs
    from `clock_timestamp()`, when the statement runs, not from the transaction's start: time
    spent waiting for a lock must not shorten it.
    """
    return text(
        f"""
        WITH locked AS (
            SELECT id, target_domain
            FROM tasks
            WHERE id = ANY(CAST(:ids AS uuid[])) AND {predicates.CLAIMABLE}
                  AND attempts < max_attempts
            {row_lock}
        ), wanted AS (
            SELECT id AS wanted_id, target_domain AS wanted_domain,
                   row_number() OVER (PARTITION BY target_domain ORDER BY id) AS nth
            FROM locked
        ), live AS (
            SELECT target_domain AS live_domain, count(*) AS scans
            FROM tasks
            WHERE {predicates.LEASE_LIVE}
                  AND target_domain IN (SELECT wanted_domain FROM wanted)
            GROUP BY target_domain
        )
        UPDATE tasks AS t
        SET status = {predicates.RUNNING},
            attempts = attempts + 1,
            lease_owner = :owner,
            lease_token = gen_random_uuid(),
            lease_expires_at = clock_timestamp() + make_interval(secs => :lease_s),
            started_at = now(),
            updated_at = now(),
            error = NULL
        FROM wanted LEFT JOIN live ON live_domain = wanted_domain
        WHERE id = wanted_id AND nth + coalesce(scans, 0) <= :live_limit
        RETURNING id, target_domain, config, attempts, max_attempts, created_at, started_at,
                  batch_id, callback_url IS NOT NULL OR batch_id IS NOT NULL, lease_token
        """
    ).bindparams(bindparam("lease_s", type_=Float))


# Many tasks: rows another transaction holds are skipped, never waited for. A relay marking a
# batch `queued` holds several of them, and a claim waiting on the relay's rows while holding
# some the relay wants next would deadlock it (resolved only after `deadlock_timeout`, 1 s).
_CLAIM_SKIPPING = _claim_sql("FOR UPDATE SKIP LOCKED")
# One task (`wait`): its row is waited for (within the lock timeout). A claim holding one row cannot
# close a cycle, and a message that arrives while the relay still holds its task's row must
# not be dropped for it.
_CLAIM_WAITING = _claim_sql("FOR UPDATE")


async def claim_tasks(
    session: AsyncSession,
    task_ids: Sequence[uuid.UUID],
    live_limit: int,
    owner: str,
    lease_s: float,
    *,
    wait: bool = False,
) -> dict[uuid.UUID, Claim]:
    """Claimable -> running for `owner`, for `lease_s`, counting an attempt: every task of
    `task_ids` that has an attempt left and fits under its target's `live_limit`, each with a
    lease token of its own, by id. Run it under `lock_targets`. A row another transaction
    holds is skipped, or with `wait` (one task only) waited for. A task left alone (not
    visible, not claimable, out of attempts, its target busy, its row skipped) is absent:
    `count_live_scans` and `fail_exhausted_task` tell why."""
    ids = list(dict.fromkeys(task_ids))
    if wait and len(ids) > 1:
        raise ValueError("a claim waits for the row of one task only")
    stmt = _CLAIM_WAITING if wait else _CLAIM_SKIPPING
    params = {"ids": ids, "owner": owner, "lease_s": lease_s, "live_limit": live_limit}
    rows = await session.execute(stmt, params)
    return {row[0]: (ClaimedTask(*row[:9]), row[9]) for row in rows}


# Running tasks of `:domain` whose lease is still live, `:task_id` excluded.
_LIVE_SCANS = text(
    f"""
    SELECT count(*) FROM tasks
    WHERE target_domain = :domain AND {predicates.LEASE_LIVE} AND id != :task_id
    """
)


async def count_live_scans(session: AsyncSession, domain: str, other_than: uuid.UUID) -> int:
    """Running tasks of `domain` whose lease is still live, this task excluded."""
    params = {"domain": domain, "task_id": other_than}
    return int((await session.execute(_LIVE_SCANS, params)).scalar_one())


# An end like any other: it fires the deliveries trigger `task_finished_callbacks`
# (docs/design.md "Completion callbacks").
_FAIL_EXHAUSTED = text(
    f"""
    UPDATE tasks
    SET status = {predicates.FAILED},
        error = concat('gave up after ', attempts, ' attempts', ': ' || error),
        finished_at = now(), updated_at = now(), {predicates.LEASE_CLEARED}
    WHERE id = :task_id AND {predicates.CLAIMABLE} AND attempts >= max_attempts
    RETURNING id
    """
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
