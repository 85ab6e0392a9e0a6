"""Claiming the tasks of many messages in one transaction: the claim's fast path under load.

Two statements, as for one task (`claims`): lock every target of the batch, then claim every
task that is claimable, has an attempt left and fits under its target's politeness limit,
counting the batch's own claims of a domain with the scans already live. The locks are taken
in one order (by key), so batches and single claims never wait on each other in a cycle.
Each claimed task gets a lease token of its own. A task this leaves alone (not visible yet,
not claimable, its target busy, no attempt left, its row held by another transaction) goes
through the single claim, which finds out why and acts on it. None of these commits.

Idiom: `text()` built once at import.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared import keys
from shared.db import predicates
from shared.db.claims import ClaimedTask

# The lock timeout is set first (LATERAL runs the locks after it), and the targets' keys are
# locked in ascending order: `count` consumes the ordered subquery row by row.
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

# Unqualified columns below are those of `tasks AS t` (the CTEs name theirs apart). `locked`
# holds every row it returns, tested again on its newest version, so the UPDATE need not test
# claimability a second time. Rows another transaction holds are skipped, never waited for: a
# relay marking a batch `queued` holds several of them, and a batch waiting on the relay's rows
# while holding some the relay wants next would deadlock it (resolved only after
# `deadlock_timeout`, 1 s). The single claim takes a skipped task; it holds one row, so it can
# wait safely.
_CLAIM_MANY = text(
    f"""
    WITH locked AS (
        SELECT id, target_domain
        FROM tasks
        WHERE id = ANY(CAST(:ids AS uuid[])) AND {predicates.CLAIMABLE}
              AND attempts < max_attempts
        FOR UPDATE SKIP LOCKED
    ), wanted AS (
        SELECT id AS wanted_id, target_domain AS wanted_domain,
               row_number() OVER (PARTITION BY target_domain ORDER BY id) AS nth
        FROM locked
    ), live AS (
        SELECT target_domain AS live_domain, count(*) AS scans
        FROM tasks
        WHERE status = {predicates.RUNNING} AND lease_expires_at >= now()
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
)


async def lock_targets(
    session: AsyncSession, task_ids: Sequence[uuid.UUID], timeout_s: float
) -> None:
    """`claims.lock_target` for the targets of every visible task of `task_ids`, in key order;
    waiting longer than `timeout_s` for any of them raises (see `claims.is_lock_timeout`)."""
    params = {
        "ids": list(task_ids),
        "lock_class": keys.POLITENESS_LOCK_CLASS,
        "timeout_ms": str(int(timeout_s * 1000)),
    }
    await session.execute(_LOCK_TARGETS, params)


async def claim_tasks(
    session: AsyncSession,
    task_ids: Sequence[uuid.UUID],
    live_limit: int,
    owner: str,
    lease_s: float,
) -> dict[uuid.UUID, tuple[ClaimedTask, uuid.UUID]]:
    """Claim for `owner`, for `lease_s`, what the politeness limit allows of `task_ids` (run it
    under `lock_targets`, in a later statement): each claimed task and its lease token, by id."""
    params = {"ids": list(task_ids), "owner": owner, "lease_s": lease_s, "live_limit": live_limit}
    rows = await session.execute(_CLAIM_MANY, params)
    return {row[0]: (ClaimedTask(*row[:9]), row[9]) for row in rows}
