"""The relay leader's and `scanctl`'s upkeep: the leader's advisory lock, pruning published
outbox rows and expiring old idempotency keys. Each write touches a bounded batch of rows,
skipping rows another session holds. None of them commits.

Idiom: `text()` statements built once at import: advisory locks, `pg_locks` and batched
`FOR UPDATE SKIP LOCKED` deletes are PostgreSQL-specific and read clearer as SQL.
(Named apart from `shared.maintenance_jobs`, which runs these jobs, so both can be imported.)
"""

from __future__ import annotations

from sqlalchemy import Float, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

# --- the leader's lock -------------------------------------------------------

_PING_SQL = text("SELECT 1")
_TRY_LOCK_SQL = text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK_SQL = text("SELECT pg_advisory_unlock(:key)")
# A bigint key shows in pg_locks as its high and low 32 bits, objsubid 1.
_HOLDS_LOCK_SQL = text(
    """
    SELECT EXISTS (SELECT 1 FROM pg_locks
                   WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                     AND classid::bigint = :high AND objid::bigint = :low AND objsubid = 1)
    """
)


async def ping(connection: AsyncConnection) -> None:
    await connection.execute(_PING_SQL)


async def try_advisory_lock(connection: AsyncConnection, key: int) -> bool:
    """Take the session-level advisory lock `key` if it is free; it lasts until released or the
    connection ends (so a dead holder's lock goes with its connection)."""
    return bool((await connection.execute(_TRY_LOCK_SQL, {"key": key})).scalar_one())


async def holds_advisory_lock(connection: AsyncConnection, key: int) -> bool:
    params = {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF}
    return bool((await connection.execute(_HOLDS_LOCK_SQL, params)).scalar_one())


async def advisory_unlock(connection: AsyncConnection, key: int) -> None:
    await connection.execute(_UNLOCK_SQL, {"key": key})


# --- pruning published outbox rows -------------------------------------------

_PUBLISHED_BEFORE_RETENTION = "published_at < now() - make_interval(secs => :retention_s)"

# Small batches, rows another session holds skipped: pruning never waits on, or
# holds up, the relay (which only ever locks unpublished rows anyway).
_PRUNE_PUBLISHED_SQL = text(
    f"""
    DELETE FROM outbox
    WHERE id IN (SELECT id FROM outbox WHERE {_PUBLISHED_BEFORE_RETENTION}
                 ORDER BY published_at LIMIT :limit FOR UPDATE SKIP LOCKED)
    """
).bindparams(bindparam("retention_s", type_=Float))

_COUNT_PRUNABLE_SQL = text(
    f"SELECT count(*) FROM outbox WHERE {_PUBLISHED_BEFORE_RETENTION}"
).bindparams(bindparam("retention_s", type_=Float))


async def prune_published(session: AsyncSession, retention_s: float, limit: int) -> int:
    """Delete up to `limit` rows published more than `retention_s` ago; returns how many."""
    params = {"retention_s": retention_s, "limit": limit}
    result = await session.execute(_PRUNE_PUBLISHED_SQL, params)
    return int(result.rowcount)  # type: ignore[attr-defined]


async def count_prunable(session: AsyncSession, retention_s: float) -> int:
    params = {"retention_s": retention_s}
    return int((await session.execute(_COUNT_PRUNABLE_SQL, params)).scalar_one())


# --- expiring tasks' idempotency keys ----------------------------------------

_EXPIRED_KEY = (
    "idempotency_key IS NOT NULL AND created_at < now() - make_interval(secs => :older_than_s)"
)

# Small batches, rows another session holds skipped: a large expiry never holds many
# row locks, nor waits on a worker.
_EXPIRE_IDEMPOTENCY_SQL = text(
    f"""
    UPDATE tasks SET idempotency_key = NULL
    WHERE id IN (SELECT id FROM tasks WHERE {_EXPIRED_KEY} LIMIT :batch FOR UPDATE SKIP LOCKED)
    """
).bindparams(bindparam("older_than_s", type_=Float))

_COUNT_EXPIRED_SQL = text(f"SELECT count(*) FROM tasks WHERE {_EXPIRED_KEY}").bindparams(
    bindparam("older_than_s", type_=Float)
)


async def count_expired_idempotency_keys(session: AsyncSession, older_than_s: float) -> int:
    params = {"older_than_s": older_than_s}
    return int((await session.execute(_COUNT_EXPIRED_SQL, params)).scalar_one())


async def expire_idempotency_keys(session: AsyncSession, older_than_s: float, limit: int) -> int:
    """Clear up to `limit` idempotency keys of tasks created over `older_than_s` ago."""
    params = {"older_than_s": older_than_s, "batch": limit}
    result = await session.execute(_EXPIRE_IDEMPOTENCY_SQL, params)
    return int(result.rowcount)  # type: ignore[attr-defined]
