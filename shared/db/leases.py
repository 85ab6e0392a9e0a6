"""Renewing the leases of every run of a worker process in one statement.

A worker renews all the leases it holds together (`worker_service.lease`), so a process with
hundreds of scans in flight writes once per renewal interval, not once per scan. Rows another
transaction holds at that moment (a final write, a relay marking a batch) are skipped rather
than waited for: waiting on several rows in no set order could deadlock with another
multi-row write, and a skipped lease is simply renewed at the next turn.

Idiom: `text()` built once at import.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import predicates

# A lease that has expired cannot be revived, even if nobody took the task over yet: from its
# expiry on, politeness counts the scan as dead and the leader may send it again.
# `lost`: a held lease the statement looked at and could not renew (the token is no longer
# current, the lease expired, the task is no longer running) or whose task is gone.
_RENEW_LEASES = text(
    f"""
    WITH held AS (
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[])) AS h(id, token)
    ), locked AS (
        SELECT id FROM tasks WHERE id IN (SELECT id FROM held) FOR UPDATE SKIP LOCKED
    ), renewed AS (
        UPDATE tasks AS t
        SET lease_expires_at = clock_timestamp() + make_interval(secs => :lease_s),
            updated_at = now()
        FROM held
        WHERE t.id = held.id AND t.id IN (SELECT id FROM locked)
              AND t.status = {predicates.RUNNING} AND t.lease_token = held.token
              AND t.lease_expires_at > clock_timestamp()
        RETURNING t.id
    )
    SELECT held.id AS lost
    FROM held
    WHERE held.id NOT IN (SELECT id FROM renewed)
      AND (held.id IN (SELECT id FROM locked)
           OR NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.id = held.id))
    """
)


async def renew_leases(
    session: AsyncSession, held: Mapping[uuid.UUID, uuid.UUID], lease_s: float
) -> set[uuid.UUID]:
    """Push forward by `lease_s` every lease of `held` (task id → lease token) still current;
    the ids whose lease is gone. A lease whose row was busy is neither renewed nor gone."""
    params = {"ids": list(held), "tokens": list(held.values()), "lease_s": lease_s}
    return set((await session.execute(_RENEW_LEASES, params)).scalars())
