"""The claim's limits against a real PostgreSQL: leases measured from the claim itself and never
revived once expired, and a target lock that is waited for only so long."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import safeguards
from shared.db import claims, leases
from shared.db.models import TaskStatus
from shared.settings import Settings
from tests.helpers import eventually
from tests.workers import (
    GatedScanner,
    claim_one,
    committed_task,
    load,
    outbox_of,
    worker_settings,
)
from worker_service.lifecycle import Outcome, run_task
from worker_service.runtime import WorkerRuntime

DOMAIN = "example.com"


async def database_clock(session: AsyncSession) -> datetime:
    """The server's wall clock now, whatever transaction `session` is in."""
    clock: datetime = (await session.execute(select(func.clock_timestamp()))).scalar_one()
    return clock


async def test_an_expired_lease_cannot_be_renewed_even_when_nobody_took_the_task_over(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    task_id = await committed_task(sessionmaker)
    async with sessionmaker() as session, session.begin():
        token = await claim_one(session, task_id, "stalled", 0.2)
    claimed = await load(sessionmaker, task_id)
    expires = claimed.lease_expires_at
    assert expires is not None

    async def expired() -> bool:
        async with sessionmaker() as session:
            return await database_clock(session) > expires

    await eventually(expired, "the lease to expire")
    async with sessionmaker() as session, session.begin():
        lost = await leases.renew_leases(session, {task_id: token}, 60)
    assert lost == {task_id}
    # Nothing else touched the task: the token is still the holder's, yet it stays expired.
    task = await load(sessionmaker, task_id)
    assert (task.status, task.lease_token) == (TaskStatus.RUNNING, token)
    assert task.lease_expires_at == claimed.lease_expires_at


async def test_a_live_lease_is_renewed_by_its_holder(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # The counterpart of the test above: the same renewal works while the lease lives.
    task_id = await committed_task(sessionmaker)
    async with sessionmaker() as session, session.begin():
        token = await claim_one(session, task_id, "alive", 30)
    claimed = await load(sessionmaker, task_id)
    async with sessionmaker() as session, session.begin():
        assert await leases.renew_leases(session, {task_id: token}, 60) == set()
    renewed = await load(sessionmaker, task_id)
    assert claimed.lease_expires_at is not None
    assert renewed.lease_expires_at is not None
    assert (renewed.lease_expires_at - claimed.lease_expires_at).total_seconds() > 25


async def test_a_lease_claimed_after_waiting_for_the_target_lock_has_its_full_length(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    task_id = await committed_task(sessionmaker)
    lease_s, held_s = 2.0, 1.0
    async with sessionmaker() as holder, sessionmaker() as claimer:
        await holder.begin()
        await claims.lock_targets(holder, [task_id], 5)
        await claimer.begin()
        # The claim's transaction starts here, as the worker's does with its existence look.
        began = (await claimer.execute(select(func.now()))).scalar_one()

        async def lock_then_claim() -> dict[uuid.UUID, claims.Claim]:
            await claims.lock_targets(claimer, [task_id], 5)
            return await claims.claim_tasks(claimer, [task_id], 2, "patient", lease_s)

        claiming = asyncio.create_task(lock_then_claim())
        await asyncio.sleep(held_s)
        assert not claiming.done(), "the claim did not wait for the target lock"
        released = await database_clock(holder)
        await holder.commit()
        assert task_id in await asyncio.wait_for(claiming, 10)
        await claimer.commit()
    expires = (await load(sessionmaker, task_id)).lease_expires_at
    assert expires is not None
    # Counted from the claim, not from the transaction's start a second earlier.
    assert (expires - released).total_seconds() >= lease_s
    assert (expires - began).total_seconds() >= lease_s + held_s


@pytest.fixture
async def runtime(
    settings: Settings, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[WorkerRuntime]:
    tuned = worker_settings(settings, target_lock_timeout_s=0.3, politeness_delay_s=5.0)
    redis = safeguards.create_redis(tuned)
    yield WorkerRuntime(tuned, engine, sessionmaker, GatedScanner(), redis, owner="lock-worker")
    await redis.aclose()


def deferred(reason: str) -> float:
    return REGISTRY.get_sample_value("scan_outbox_tasks_deferred_total", {"reason": reason}) or 0.0


async def test_a_claim_whose_target_lock_is_held_too_long_defers_the_task_instead_of_blocking(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    task_id = await committed_task(sessionmaker)
    before = deferred("lock_timeout")
    scanner = runtime.scanner
    assert isinstance(scanner, GatedScanner)
    async with sessionmaker() as holder:
        # Another claim of the same target stalled under the lock (its worker frozen, say).
        await holder.begin()
        await claims.lock_targets(holder, [task_id], 5)
        started = time.monotonic()
        outcome = await asyncio.wait_for(run_task(runtime, task_id), 10)
        waited_s = time.monotonic() - started
        await holder.rollback()
    assert outcome == Outcome.DEFERRED
    assert 0.3 <= waited_s < 2.0, waited_s
    assert scanner.calls == []
    assert deferred("lock_timeout") == before + 1
    task = await load(sessionmaker, task_id)
    assert (task.status, task.attempts, task.lease_token) == (TaskStatus.PENDING, 0, None)
    first, later = await outbox_of(sessionmaker, task_id)
    assert later.published_at is None
    async with sessionmaker() as session:
        due_in = await session.execute(
            text("SELECT extract(epoch FROM available_at - now()) FROM outbox WHERE id = :id"),
            {"id": later.id},
        )
        assert float(due_in.scalar_one()) > 4.0, "the deferred message is due only later"
    assert first.id < later.id

    # The lock's time limit ended with the deferral's transaction: once the target is free,
    # the message claims and runs the task.
    assert await run_task(runtime, task_id) == Outcome.SUCCEEDED
    assert scanner.calls == [DOMAIN]
    assert (await load(sessionmaker, task_id)).status == TaskStatus.SUCCEEDED
