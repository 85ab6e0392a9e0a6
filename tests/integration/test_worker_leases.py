"""A worker's leases renewed together against a real PostgreSQL: one statement for every lease
of a process, the lost ones named, busy rows left for the next turn; and the keeper that
renews hundreds of runs' leases and cancels just the run whose lease is gone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import safeguards
from shared.db import leases, tasks
from shared.db.models import Task, TaskStatus
from shared.settings import Settings
from tests.helpers import eventually
from tests.workers import GatedScanner, claim_one, committed_task, load, worker_settings
from worker_service.lifecycle import Outcome, run_task
from worker_service.runtime import WorkerRuntime

RUNS = 20


async def claimed(
    sessionmaker: async_sessionmaker[AsyncSession], domain: str, lease_s: float
) -> tuple[uuid.UUID, uuid.UUID]:
    task_id = await committed_task(sessionmaker, domain)
    async with sessionmaker() as session, session.begin():
        token = await claim_one(session, task_id, "w", lease_s)
    return task_id, token


async def lease_expiry(sessionmaker: async_sessionmaker[AsyncSession], task_id: uuid.UUID) -> float:
    async with sessionmaker() as session:
        stmt = select(func.extract("epoch", Task.lease_expires_at)).where(Task.id == task_id)
        return float((await session.execute(stmt)).scalar_one())


async def test_one_statement_renews_every_live_lease_and_names_only_the_lost_ones(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    live = await claimed(sessionmaker, "live.example.com", 30)
    expired = await claimed(sessionmaker, "expired.example.com", 0.05)
    stale_id, _current = await claimed(sessionmaker, "stale.example.com", 30)
    cancelled = await claimed(sessionmaker, "cancelled.example.com", 30)
    deleted = await claimed(sessionmaker, "deleted.example.com", 30)
    busy = await claimed(sessionmaker, "busy.example.com", 30)
    task = await load(sessionmaker, cancelled[0])
    async with sessionmaker() as session, session.begin():
        assert await tasks.cancel_task(session, task.user_id, cancelled[0]) is not None
        await session.execute(delete(Task).where(Task.id == deleted[0]))
    await asyncio.sleep(0.1)
    before = {task_id: await lease_expiry(sessionmaker, task_id) for task_id in (live[0], busy[0])}
    held = dict([live, expired, (stale_id, uuid.uuid4()), cancelled, deleted, busy])
    async with sessionmaker() as holder, holder.begin():
        # Another transaction (a final write, say) holds the busy task's row meanwhile.
        await holder.execute(select(Task.id).where(Task.id == busy[0]).with_for_update())
        async with sessionmaker() as session, session.begin():
            lost = await leases.renew_leases(session, held, 60)
    assert lost == {expired[0], stale_id, cancelled[0], deleted[0]}
    assert await lease_expiry(sessionmaker, live[0]) > before[live[0]] + 25
    # Skipped, not waited for, and not reported lost: the next turn renews it.
    assert await lease_expiry(sessionmaker, busy[0]) == before[busy[0]]
    async with sessionmaker() as session, session.begin():
        assert await leases.renew_leases(session, {busy[0]: busy[1]}, 60) == set()
    assert await lease_expiry(sessionmaker, busy[0]) > before[busy[0]] + 25


@pytest.fixture
async def runtime(
    settings: Settings, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[WorkerRuntime]:
    tuned = worker_settings(settings).model_copy(update={"worker_lease_s": 0.6})
    redis = safeguards.create_redis(tuned)
    runtime = WorkerRuntime(tuned, engine, sessionmaker, GatedScanner(gated=True), redis)
    yield runtime
    await redis.aclose()


async def test_many_runs_keep_their_leases_and_a_cancel_stops_only_its_own_run(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    scanner = runtime.scanner
    assert isinstance(scanner, GatedScanner)
    task_ids = [await committed_task(sessionmaker, f"t{i}.example.com") for i in range(RUNS)]
    runs = [asyncio.create_task(run_task(runtime, task_id)) for task_id in task_ids]
    await eventually(lambda: scanner.running == RUNS, "every scan to start")
    # Several lease lengths later every lease is still held: a second delivery claims nothing.
    await asyncio.sleep(3 * runtime.settings.worker_lease_s)
    again = await asyncio.gather(*(run_task(runtime, task_id) for task_id in task_ids))
    assert set(again) == {Outcome.SKIPPED}
    task = await load(sessionmaker, task_ids[0])
    async with sessionmaker() as session, session.begin():
        assert await tasks.cancel_task(session, task.user_id, task_ids[0]) is not None
    assert await runs[0] == Outcome.CANCELLED
    assert (scanner.cancelled, scanner.running) == (1, RUNS - 1)
    scanner.release.set()
    assert await asyncio.gather(*runs[1:]) == [Outcome.SUCCEEDED] * (RUNS - 1)
    statuses = {(await load(sessionmaker, task_id)).status for task_id in task_ids[1:]}
    assert statuses == {TaskStatus.SUCCEEDED}
    # Nothing held: the keeper keeps no timer running.
    assert runtime.keeper is not None
    assert runtime.keeper.renewer is None


async def test_the_keeper_outlives_a_renewal_that_fails_unexpectedly(
    runtime: WorkerRuntime,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_renew = leases.renew_leases
    calls = 0

    async def renew_failing_once(
        session: AsyncSession, held: dict[uuid.UUID, uuid.UUID], lease_s: float
    ) -> set[uuid.UUID]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in one renewal")
        return await real_renew(session, held, lease_s)

    monkeypatch.setattr(leases, "renew_leases", renew_failing_once)
    # Room for the failure's traceback to be rendered before the lease runs out.
    runtime.settings = runtime.settings.model_copy(update={"worker_lease_s": 1.5})
    scanner = runtime.scanner
    assert isinstance(scanner, GatedScanner)
    task_id = await committed_task(sessionmaker, "kept.example.com")
    run = asyncio.create_task(run_task(runtime, task_id))
    await eventually(lambda: scanner.running == 1, "the scan to start")
    await asyncio.sleep(2 * runtime.settings.worker_lease_s)
    # The renewals after the failed one kept the lease: a second delivery claims nothing.
    assert calls > 2
    assert await run_task(runtime, task_id) == Outcome.SKIPPED
    scanner.release.set()
    assert await run == Outcome.SUCCEEDED
