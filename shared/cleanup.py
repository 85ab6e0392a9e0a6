"""Operator cleanups behind `scanctl cleanup-orphaned` and `scanctl full-cleanup`.

Orphans and pruning go through `shared.maintenance_jobs`, the code the relay's
maintenance jobs run; this module adds what only an operator asks for: stale
Redis safeguard keys and expired idempotency keys. Every step honours `dry_run`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import keys, maintenance_jobs
from shared.db import batches, housekeeping, inspection
from shared.db.models import TERMINAL_STATUSES
from shared.errors import Unavailable
from shared.settings import Settings

SCAN_COUNT = 500
IDEMPOTENCY_BATCH = 1000

# Check and delete in one step, so a lock given an expiry meanwhile is kept.
_DELETE_IF_NO_TTL = (
    "if redis.call('ttl', KEYS[1]) == -1 then return redis.call('del', KEYS[1]) end return 0"
)


class ProgressSink(Protocol):
    """Where a long step reports how far it got (a progress bar, or nothing)."""

    def step(self, description: str, total: int | None = None) -> None: ...

    def advance(self, amount: int = 1) -> None: ...


class NoProgress:
    def step(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass


@dataclass(frozen=True)
class CleanupScope:
    """What a cleanup works on (the database, Redis, the settings), whether it only counts
    (`dry_run`), and where its long steps report progress."""

    sessionmaker: async_sessionmaker[AsyncSession]
    redis: aioredis.Redis
    settings: Settings
    dry_run: bool
    progress: ProgressSink = field(default_factory=NoProgress)


@dataclass
class CleanupReport:
    """What each step did (or, with dry_run, would do), by step name."""

    dry_run: bool
    steps: dict[str, dict[str, int]] = field(default_factory=dict)


def _redis_down(exc: Exception) -> Unavailable:
    return Unavailable(f"Redis is unreachable ({type(exc).__name__}); check REDIS_URL")


def _marker_task_id(key: bytes) -> uuid.UUID | None:
    _, _, raw = key.decode(errors="replace").partition(":")
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


async def _stale_markers(
    sessionmaker: async_sessionmaker[AsyncSession], batch: Sequence[bytes]
) -> list[bytes]:
    """Markers whose task is terminal or gone; the marker only ever helps a live task."""
    by_id = {task_id: key for key in batch if (task_id := _marker_task_id(key)) is not None}
    async with sessionmaker() as session:
        statuses = await inspection.get_task_statuses(session, list(by_id))
    return [
        key
        for task_id, key in by_id.items()
        if task_id not in statuses or statuses[task_id] in TERMINAL_STATUSES
    ]


async def remove_stale_markers(scope: CleanupScope) -> dict[str, int]:
    """Delete `task_created:{id}` markers of terminal or deleted tasks."""
    seen = stale = 0
    batch: list[bytes] = []
    try:
        keys_iter = scope.redis.scan_iter(match=keys.TASK_CREATED_MARKER_PATTERN, count=SCAN_COUNT)
        async for key in keys_iter:
            batch.append(key)
            if len(batch) < SCAN_COUNT:
                continue
            stale += await _drop_markers(scope, batch)
            seen, batch = seen + len(batch), []
            scope.progress.advance(SCAN_COUNT)
        if batch:
            stale += await _drop_markers(scope, batch)
            seen += len(batch)
            scope.progress.advance(len(batch))
    except (RedisError, OSError) as exc:
        raise _redis_down(exc) from exc
    return {"markers_seen": seen, "markers_removed": stale}


async def _drop_markers(scope: CleanupScope, batch: Sequence[bytes]) -> int:
    stale = await _stale_markers(scope.sessionmaker, batch)
    if stale and not scope.dry_run:
        await scope.redis.delete(*stale)
    return len(stale)


async def remove_locks_without_ttl(scope: CleanupScope) -> dict[str, int]:
    """Delete `lock:*` keys that would never expire (a holder died between SET and EXPIRE)."""
    redis, dry_run, progress = scope.redis, scope.dry_run, scope.progress
    seen = removed = 0
    try:
        async for key in redis.scan_iter(match=keys.LOCK_PATTERN, count=SCAN_COUNT):
            seen += 1
            progress.advance()
            if await redis.ttl(key) != -1:
                continue
            if dry_run:
                removed += 1
            else:
                removed += int(await redis.eval(_DELETE_IF_NO_TTL, 1, key))
    except (RedisError, OSError) as exc:
        raise _redis_down(exc) from exc
    return {"locks_seen": seen, "locks_removed": removed}


class _ExpiryStatements(Protocol):
    """A pair of statements over one kind of idempotency key: count the expired, clear some."""

    async def count_expired_idempotency_keys(
        self, session: AsyncSession, older_than_s: float
    ) -> int: ...

    async def expire_idempotency_keys(
        self, session: AsyncSession, older_than_s: float, limit: int
    ) -> int: ...


async def expire_idempotency_keys(scope: CleanupScope, statements: _ExpiryStatements) -> int:
    """Clear keys older than `idempotency_retention_s`, one small batch per commit; the count
    cleared (or, with `dry_run`, due)."""
    sessionmaker, retention_s = scope.sessionmaker, scope.settings.idempotency_retention_s
    async with sessionmaker() as session:
        due = await statements.count_expired_idempotency_keys(session, retention_s)
    if scope.dry_run or not due:
        return due
    cleared = 0
    while True:
        async with sessionmaker() as session, session.begin():
            count = await statements.expire_idempotency_keys(
                session, retention_s, IDEMPOTENCY_BATCH
            )
        if not count:
            return cleared
        cleared += count
        scope.progress.advance(count)


async def cleanup_orphaned(scope: CleanupScope) -> CleanupReport:
    """Re-dispatch or fail orphaned tasks, then drop stale markers and locks without a TTL."""
    report = CleanupReport(dry_run=scope.dry_run)
    scope.progress.step("re-dispatching orphaned tasks")
    report.steps["orphans"] = await maintenance_jobs.redispatch_orphans(
        scope.sessionmaker, scope.settings, dry_run=scope.dry_run
    )
    scope.progress.step("removing stale task markers")
    report.steps["markers"] = await remove_stale_markers(scope)
    scope.progress.step("removing locks without a TTL")
    report.steps["locks"] = await remove_locks_without_ttl(scope)
    return report


async def full_cleanup(scope: CleanupScope) -> CleanupReport:
    """`cleanup_orphaned`, then prune published outbox rows and expire idempotency keys."""
    report = await cleanup_orphaned(scope)
    scope.progress.step("pruning published outbox rows")
    report.steps["outbox"] = await maintenance_jobs.prune_published(
        scope.sessionmaker, scope.settings, dry_run=scope.dry_run
    )
    scope.progress.step("expiring idempotency keys")
    for step, counter, statements in (
        ("idempotency", "idempotency_keys_expired", housekeeping),
        ("batch_idempotency", "batch_idempotency_keys_expired", batches),
    ):
        report.steps[step] = {counter: await expire_idempotency_keys(scope, statements)}
    return report
