"""Claiming and finishing tasks against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import queries
from shared.db.models import Task, TaskStatus
from shared.messages import scan_entry
from shared.settings import Settings
from tests.helpers import make_user
from worker_service.lifecycle import Outcome, run_task
from worker_service.runtime import WorkerRuntime


class CountingScanner:
    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.delay_s = delay_s
        self.fail = fail

    async def __call__(
        self, domain: str, config: dict[str, Any], settings: Settings
    ) -> dict[str, Any]:
        self.calls.append(domain)
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("scanner bug")
        return {"domain": domain, "ok": True}


@pytest.fixture
def scanner() -> CountingScanner:
    return CountingScanner(delay_s=0.05)


@pytest.fixture
def runtime(
    settings: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    scanner: CountingScanner,
) -> WorkerRuntime:
    return WorkerRuntime(settings, engine, sessionmaker, scanner, owner="test-worker")


async def committed_task(sessionmaker: async_sessionmaker[AsyncSession]) -> uuid.UUID:
    user, _ = await make_user(sessionmaker, f"u{uuid.uuid4().hex[:8]}")
    task_id = uuid.uuid4()
    new = queries.NewTask(user_id=user.id, target_domain="example.com", config={}, max_attempts=3)
    async with sessionmaker() as session, session.begin():
        await queries.insert_task_with_message(session, task_id, new, scan_entry(task_id, "scans"))
    return task_id


async def load(sessionmaker: async_sessionmaker[AsyncSession], task_id: uuid.UUID) -> Task:
    async with sessionmaker() as session:
        return (await session.execute(select(Task).where(Task.id == task_id))).scalar_one()


async def test_same_message_delivered_twice_runs_the_scan_once(
    runtime: WorkerRuntime, scanner: CountingScanner, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    task_id = await committed_task(sessionmaker)
    outcomes = await asyncio.gather(run_task(runtime, task_id), run_task(runtime, task_id))
    assert sorted(outcomes) == sorted([Outcome.SUCCEEDED, Outcome.SKIPPED])
    # A third, late delivery after the end finds nothing to claim either.
    assert await run_task(runtime, task_id) == Outcome.SKIPPED
    assert scanner.calls == ["example.com"]
    task = await load(sessionmaker, task_id)
    assert task.status == TaskStatus.SUCCEEDED
    assert task.attempts == 1
    assert task.result == {"domain": "example.com", "ok": True}
    assert task.finished_at is not None
    assert task.lease_token is None


async def test_message_for_an_unknown_task_runs_nothing_and_writes_nothing(
    runtime: WorkerRuntime, scanner: CountingScanner, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    assert await run_task(runtime, uuid.uuid4()) == Outcome.SKIPPED
    assert scanner.calls == []
    async with sessionmaker() as session:
        assert (await session.execute(select(Task))).first() is None


async def test_uncommitted_task_is_invisible_to_the_worker(
    runtime: WorkerRuntime, scanner: CountingScanner, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    user, _ = await make_user(sessionmaker)
    task_id = uuid.uuid4()
    new = queries.NewTask(user_id=user.id, target_domain="example.com", config={}, max_attempts=3)
    async with sessionmaker() as session:
        transaction = await session.begin()
        await queries.insert_task_with_message(session, task_id, new, scan_entry(task_id, "scans"))
        assert await run_task(runtime, task_id) == Outcome.SKIPPED
        await transaction.rollback()
    assert scanner.calls == []


async def test_a_crashing_scan_fails_the_task_with_a_reason(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    runtime.scanner = CountingScanner(fail=True)
    task_id = await committed_task(sessionmaker)
    assert await run_task(runtime, task_id) == Outcome.FAILED
    task = await load(sessionmaker, task_id)
    assert task.status == TaskStatus.FAILED
    assert task.error == "scan error: RuntimeError"
    assert task.result is None


async def test_finish_with_a_stale_lease_token_writes_nothing(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    task_id = await committed_task(sessionmaker)
    current = uuid.uuid4()
    async with sessionmaker() as session, session.begin():
        assert await queries.claim_task(session, task_id, "w1", current, 60) is not None
    async with sessionmaker() as session, session.begin():
        stale = await queries.finish_task(
            session, task_id, uuid.uuid4(), TaskStatus.SUCCEEDED, {"stale": True}, None
        )
    assert stale is False
    task = await load(sessionmaker, task_id)
    assert task.status == TaskStatus.RUNNING
    assert task.result is None
