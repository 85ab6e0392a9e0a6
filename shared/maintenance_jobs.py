"""Maintenance of tasks and the outbox: the relay leader's jobs and `scanctl` run this same code.

Each function works in small batches, one transaction each, and returns counts;
with `dry_run` it only counts what it would do. Safe to run from several places
at once: batches skip rows another session holds, and every change is conditional.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import housekeeping, outbox, recovery
from shared.db.models import TaskStatus
from shared.messages import scan_entry
from shared.settings import Settings


class OrphanReason(enum.StrEnum):
    """Why `redispatch_orphans` sent a task again: the keys of the dict it returns and the
    `reason` labels of the metric (the condition itself: `predicates.LEASE_EXPIRED`)."""

    LEASE_EXPIRED = "lease_expired"
    UNLOCATED = "unlocated"


_EXPIRED_FAILED = f"{OrphanReason.LEASE_EXPIRED}_failed"


async def send_again(session: AsyncSession, task_ids: Sequence[uuid.UUID], queue: str) -> None:
    """One new scan message per task just put back to pending, in the caller's transaction."""
    await outbox.insert_messages(session, [scan_entry(task_id, queue) for task_id in task_ids])


Batch = Callable[[AsyncSession], Awaitable[list[recovery.RedispatchedTask]]]


async def _redispatch_batches(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, batch: Batch
) -> tuple[int, int]:
    """Run `batch` until a short one; (sent again, failed). Each batch's task updates and
    their new outbox rows commit together."""
    redispatched = failed = 0
    while True:
        async with sessionmaker() as session, session.begin():
            tasks = await batch(session)
            again = [t for t in tasks if t.status == TaskStatus.PENDING]
            await send_again(session, [t.task_id for t in again], settings.queue_name)
        redispatched += len(again)
        failed += len(tasks) - len(again)
        if len(tasks) < settings.relay_redispatch_batch_size:
            return redispatched, failed


async def redispatch_orphans(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *, dry_run: bool = False
) -> dict[str, int]:
    """Send again tasks whose worker lease expired (failing those that already ran
    `max_attempts` times) and, as a last resort, tasks queued longer than `queued_stale_s`
    whose message nobody can locate (never failed, never charged an attempt).

    Returns `{lease_expired, lease_expired_failed, unlocated}`.
    """
    limit = settings.relay_redispatch_batch_size
    if dry_run:
        async with sessionmaker() as session:
            orphans = await recovery.count_orphans(session, settings.queued_stale_s)
        return {
            OrphanReason.LEASE_EXPIRED: orphans.expired_leases - orphans.expired_out_of_attempts,
            _EXPIRED_FAILED: orphans.expired_out_of_attempts,
            OrphanReason.UNLOCATED: orphans.unlocated,
        }

    async def expired(session: AsyncSession) -> list[recovery.RedispatchedTask]:
        return await recovery.redispatch_expired_leases(session, limit)

    async def unlocated(session: AsyncSession) -> list[recovery.RedispatchedTask]:
        return await recovery.redispatch_unlocated(session, settings.queued_stale_s, limit)

    expired_sent, expired_failed = await _redispatch_batches(sessionmaker, settings, expired)
    unlocated_sent, _ = await _redispatch_batches(sessionmaker, settings, unlocated)
    return {
        OrphanReason.LEASE_EXPIRED: expired_sent,
        _EXPIRED_FAILED: expired_failed,
        OrphanReason.UNLOCATED: unlocated_sent,
    }


async def prune_published(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    dry_run: bool = False,
    max_batches: int | None = None,
) -> dict[str, int]:
    """Delete outbox rows published more than `outbox_retention_s` ago, one small batch per
    transaction (unpublished and dead rows are kept). Returns `{outbox_pruned}`."""
    retention_s = settings.outbox_retention_s
    if dry_run:
        async with sessionmaker() as session:
            return {"outbox_pruned": await housekeeping.count_prunable(session, retention_s)}
    pruned = batches = 0
    while max_batches is None or batches < max_batches:
        async with sessionmaker() as session, session.begin():
            count = await housekeeping.prune_published(
                session, retention_s, settings.relay_prune_batch_size
            )
        pruned += count
        batches += 1
        if count < settings.relay_prune_batch_size:
            break
    return {"outbox_pruned": pruned}
