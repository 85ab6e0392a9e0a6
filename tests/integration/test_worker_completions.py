"""Runs' ends written together: fenced row by row, committed before a run returns, written one
by one when a batch fails, and all written at a stop; against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import safeguards, wakeups
from shared.db import completions
from shared.db.completions import Completion
from shared.db.models import TaskStatus
from shared.settings import Settings
from tests.helpers import eventually, published
from tests.workers import GatedScanner, claim_one, committed_task, load, worker_settings
from worker_service import lifecycle
from worker_service.completer import Completer
from worker_service.lifecycle import Outcome, run_task
from worker_service.runtime import WorkerRuntime


@pytest.fixture
async def runtime(
    settings: Settings, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[WorkerRuntime]:
    tuned = worker_settings(settings)
    redis = safeguards.create_redis(tuned)
    yield WorkerRuntime(tuned, engine, sessionmaker, GatedScanner(), redis, owner="w")
    await redis.aclose()


class Recorder:
    """The single-task write, counting which tasks went through it."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self.written_alone: list[uuid.UUID] = []

    async def __call__(self, end: Completion) -> bool:
        self.written_alone.append(end.task_id)
        write = lifecycle.completer_of(self.runtime).write_one
        return await write(end)


async def claimed(sessionmaker: async_sessionmaker[AsyncSession], domain: str) -> Completion:
    """A committed task claimed under a fresh token, and a successful end for it."""
    task_id = await committed_task(sessionmaker, domain)
    async with sessionmaker() as session, session.begin():
        token = await claim_one(session, task_id, "w", 30)
    return Completion(task_id, token, TaskStatus.SUCCEEDED, {"domain": domain}, None)


async def take_over(sessionmaker: async_sessionmaker[AsyncSession], task_id: uuid.UUID) -> None:
    """Another worker's claim: the old token no longer holds the lease."""
    async with sessionmaker() as session, session.begin():
        await session.execute(
            text("UPDATE tasks SET lease_token = gen_random_uuid() WHERE id = :id"), {"id": task_id}
        )


async def test_a_stale_token_in_a_batch_changes_nothing_while_the_others_land(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    ends = [await claimed(sessionmaker, f"d{index}.example.com") for index in range(3)]
    await take_over(sessionmaker, ends[1].task_id)
    recorder = Recorder(runtime)
    completer = Completer(sessionmaker, recorder, max_batch=10)

    written = await asyncio.gather(*(completer.finish(end) for end in ends))

    assert written == [True, False, True]
    assert recorder.written_alone == []  # one statement wrote the three
    for end in (ends[0], ends[2]):
        task = await load(sessionmaker, end.task_id)
        assert (task.status, task.result, task.lease_token) == (
            TaskStatus.SUCCEEDED,
            end.result,
            None,
        )
        assert task.finished_at is not None
    stale = await load(sessionmaker, ends[1].task_id)
    assert (stale.status, stale.result, stale.finished_at) == (TaskStatus.RUNNING, None, None)
    assert stale.lease_token not in (None, ends[1].lease_token)


async def test_a_run_returns_only_after_its_end_is_committed(
    runtime: WorkerRuntime, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    task_id = await committed_task(sessionmaker)
    # Another transaction holds the task's row once the scan is over: the end cannot commit.
    scanner = GatedScanner(gated=True)
    runtime.scanner = scanner
    run = asyncio.create_task(run_task(runtime, task_id))
    await eventually(lambda: scanner.calls, "the scan started")
    async with engine.connect() as blocker:
        transaction = await blocker.begin()
        lock = text("SELECT 1 FROM tasks WHERE id = :id FOR UPDATE")
        await blocker.execute(lock, {"id": task_id})
        scanner.release.set()
        await asyncio.sleep(0.5)
        # The run (whose return is what lets the worker ack its message) is still waiting.
        assert not run.done()
        assert (await load(sessionmaker, task_id)).status == TaskStatus.RUNNING
        await transaction.rollback()
    assert await asyncio.wait_for(run, 10) == Outcome.SUCCEEDED
    assert (await load(sessionmaker, task_id)).status == TaskStatus.SUCCEEDED


async def test_a_failed_batch_is_written_task_by_task_with_the_same_fence(
    runtime: WorkerRuntime,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ends = [await claimed(sessionmaker, f"f{index}.example.com") for index in range(3)]
    await take_over(sessionmaker, ends[0].task_id)

    real = completions.finish_tasks

    async def broken(session: AsyncSession, batch: Sequence[Completion]) -> set[uuid.UUID]:
        # The same statement serves a single end: only the batch of several fails.
        if len(batch) > 1:
            raise RuntimeError("the batch statement failed")
        return await real(session, batch)

    monkeypatch.setattr(completions, "finish_tasks", broken)
    recorder = Recorder(runtime)
    completer = Completer(sessionmaker, recorder, max_batch=10)

    written = await asyncio.gather(*(completer.finish(end) for end in ends))

    assert written == [False, True, True]
    assert sorted(recorder.written_alone) == sorted(end.task_id for end in ends)
    assert (await load(sessionmaker, ends[0].task_id)).status == TaskStatus.RUNNING
    for end in ends[1:]:
        assert (await load(sessionmaker, end.task_id)).status == TaskStatus.SUCCEEDED


async def test_close_writes_every_end_handed_over_even_if_its_run_was_cancelled(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    ends = [await claimed(sessionmaker, f"c{index}.example.com") for index in range(20)]
    completer = Completer(sessionmaker, Recorder(runtime), max_batch=4)
    runs = [asyncio.create_task(completer.finish(end)) for end in ends]
    await asyncio.sleep(0)  # every end handed over, the first batch on its way
    for run in runs:
        run.cancel()  # what a stop does to runs that outlive the shutdown timeout

    await asyncio.wait_for(completer.close(), 10)

    assert completer.pending == []
    for end in ends:
        assert (await load(sessionmaker, end.task_id)).status == TaskStatus.SUCCEEDED


async def test_the_ends_written_are_hinted_after_commit_with_their_batch_and_callbacks(
    runtime: WorkerRuntime,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    runtime.hints = wakeups.Hints(wakeups.create_client(runtime.settings))
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(wakeups.FINISHED, wakeups.CALLBACKS)
    batch = uuid.uuid4()
    ends = [await claimed(sessionmaker, f"h{index}.example.com") for index in range(3)]
    ends[0] = dataclasses.replace(ends[0], batch_id=batch, may_call_back=True)
    await take_over(sessionmaker, ends[2].task_id)
    completer = lifecycle.completer_of(runtime)
    try:
        written = await asyncio.gather(*(completer.finish(end) for end in ends))
        await completer.close()
        await runtime.hints.flush()
        received = await published(pubsub)
    finally:
        pubsub.close()
        await runtime.hints.aclose()

    assert written == [True, True, False]
    finished = {
        p
        for channel, payload in received
        if channel == wakeups.FINISHED
        for p in payload.split(";")
    }
    # The stale end was not written: no hint for it.
    assert finished == {f"{ends[0].task_id},{batch}", f"{ends[1].task_id},"}
    assert (wakeups.CALLBACKS, "") in received
