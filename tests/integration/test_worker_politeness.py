"""At most SCAN_PER_TARGET_CONCURRENCY live scans of a domain across workers; others unhindered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import claims
from shared.db.models import TaskStatus
from shared.settings import Settings
from tests.helpers import eventually
from tests.workers import (
    GatedScanner,
    claim_one,
    close_runtime,
    committed_task,
    load,
    new_runtime,
    outbox_of,
    worker_settings,
)
from worker_service.lifecycle import Outcome, run_task
from worker_service.runtime import WorkerRuntime

WORKERS = 3


@pytest.fixture
def scanner() -> GatedScanner:
    return GatedScanner(gated=True)


@pytest.fixture
async def workers(
    settings: Settings, engine: AsyncEngine, scanner: GatedScanner
) -> AsyncIterator[list[WorkerRuntime]]:
    """Three workers with their own engines, as separate processes would have."""
    tuned = worker_settings(settings, per_target_concurrency=2, politeness_delay_s=30.0)
    runtimes = [new_runtime(tuned, scanner, owner=f"worker-{index}") for index in range(WORKERS)]
    yield runtimes
    for runtime in runtimes:
        await close_runtime(runtime)


def deferred_count() -> float:
    value = REGISTRY.get_sample_value("scan_outbox_tasks_deferred_total", {"reason": "politeness"})
    return value or 0.0


async def test_a_third_scan_of_one_domain_is_deferred_and_other_domains_still_run(
    workers: list[WorkerRuntime],
    scanner: GatedScanner,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    busy = [await committed_task(sessionmaker, "busy.example") for _ in range(3)]
    other = await committed_task(sessionmaker, "other.example")
    deferred_before = deferred_count()
    before = datetime.now(UTC)

    # Three workers race for the three tasks of one domain at the same moment.
    runs = [
        asyncio.create_task(run_task(worker, task_id))
        for worker, task_id in zip(workers, busy, strict=True)
    ]
    await eventually(lambda: scanner.running == 2 and any(run.done() for run in runs), "claims")
    [deferred_run] = [run for run in runs if run.done()]
    assert deferred_run.result() == Outcome.DEFERRED
    # The busy domain does not hold up another one.
    other_run = asyncio.create_task(run_task(workers[0], other))
    await eventually(lambda: scanner.running == 3, "the other domain's scan to start")

    scanner.release.set()
    outcomes = await asyncio.gather(*runs, other_run)
    assert sorted(outcomes) == sorted([Outcome.SUCCEEDED] * 3 + [Outcome.DEFERRED])
    assert deferred_count() == deferred_before + 1

    [deferred_id] = [
        task_id for task_id, run in zip(busy, runs, strict=True) if run is deferred_run
    ]
    task = await load(sessionmaker, deferred_id)
    assert (task.status, task.attempts, task.lease_token) == (TaskStatus.PENDING, 0, None)
    _first, again = await outbox_of(sessionmaker, deferred_id)
    assert again.published_at is None
    assert (again.available_at - before).total_seconds() >= 30
    assert sorted(scanner.calls) == ["busy.example", "busy.example", "other.example"]


async def test_a_deferred_task_runs_once_the_domain_has_room(
    workers: list[WorkerRuntime],
    scanner: GatedScanner,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    tasks = [await committed_task(sessionmaker, "busy.example") for _ in range(3)]
    first_two = [asyncio.create_task(run_task(workers[0], task_id)) for task_id in tasks[:2]]
    await eventually(lambda: scanner.running == 2, "two scans of the domain")
    assert await run_task(workers[1], tasks[2]) == Outcome.DEFERRED

    scanner.release.set()
    assert await asyncio.gather(*first_two) == [Outcome.SUCCEEDED] * 2
    # The deferred row's delivery (the relay would publish it when due).
    assert await run_task(workers[2], tasks[2]) == Outcome.SUCCEEDED
    assert (await load(sessionmaker, tasks[2])).attempts == 1


async def test_an_expired_lease_does_not_count_against_the_domain(
    workers: list[WorkerRuntime],
    scanner: GatedScanner,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    stalled = [await committed_task(sessionmaker, "busy.example") for _ in range(2)]
    for task_id in stalled:
        async with sessionmaker() as session, session.begin():
            await claim_one(session, task_id, "stalled", 0.01)
    fresh = await committed_task(sessionmaker, "busy.example")

    async def expired() -> bool:
        async with workers[0].sessionmaker() as session:
            return await claims.count_live_scans(session, "busy.example", fresh) == 0

    await eventually(expired, "the stalled leases to expire")
    scanner.release.set()
    assert await run_task(workers[0], fresh) == Outcome.SUCCEEDED
