"""Claiming, leasing, cancelling, retrying and finishing tasks against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import safeguards
from shared.db import leases, tasks
from shared.db.models import Task, TaskStatus
from shared.messages import scan_entry
from shared.settings import Settings
from tests.helpers import eventually, make_user
from tests.workers import (
    GatedScanner,
    claim_one,
    committed_task,
    finish_one,
    load,
    outbox_of,
    worker_settings,
)
from worker_service.lifecycle import Outcome, run_task
from worker_service.runtime import WorkerRuntime


@pytest.fixture
def scanner() -> GatedScanner:
    return GatedScanner()


@pytest.fixture
async def runtime(
    settings: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    scanner: GatedScanner,
) -> AsyncIterator[WorkerRuntime]:
    tuned = worker_settings(settings)
    redis = safeguards.create_redis(tuned)
    yield WorkerRuntime(tuned, engine, sessionmaker, scanner, redis, owner="test-worker")
    await redis.aclose()


def tune(runtime: WorkerRuntime, **overrides: object) -> None:
    runtime.settings = runtime.settings.model_copy(update=overrides)


async def test_same_message_delivered_twice_runs_the_scan_once(
    runtime: WorkerRuntime, scanner: GatedScanner, sessionmaker: async_sessionmaker[AsyncSession]
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
    runtime: WorkerRuntime, scanner: GatedScanner, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    assert await run_task(runtime, uuid.uuid4()) == Outcome.SKIPPED
    assert scanner.calls == []
    async with sessionmaker() as session:
        assert (await session.execute(select(Task))).first() is None


async def test_uncommitted_task_is_invisible_to_the_worker(
    runtime: WorkerRuntime, scanner: GatedScanner, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    user, _ = await make_user(sessionmaker)
    task_id = uuid.uuid4()
    new = tasks.NewTask(user_id=user.id, target_domain="example.com", config={}, max_attempts=3)
    async with sessionmaker() as session:
        transaction = await session.begin()
        await tasks.insert_task_with_message(session, task_id, new, scan_entry(task_id, "scans"))
        assert await run_task(runtime, task_id) == Outcome.SKIPPED
        await transaction.rollback()
    assert scanner.calls == []


async def test_a_crashing_scan_fails_the_task_with_a_reason(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    runtime.scanner = GatedScanner(error=RuntimeError("scanner bug"))
    task_id = await committed_task(sessionmaker)
    assert await run_task(runtime, task_id) == Outcome.FAILED
    task = await load(sessionmaker, task_id)
    assert task.status == TaskStatus.FAILED
    assert task.error == "scan error: RuntimeError"
    assert task.result is None


async def test_finish_and_renewal_with_a_stale_lease_token_write_nothing(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    task_id = await committed_task(sessionmaker)
    async with sessionmaker() as session, session.begin():
        current = await claim_one(session, task_id, "w1", 60)
    async with sessionmaker() as session, session.begin():
        stale = await finish_one(
            session, task_id, uuid.uuid4(), TaskStatus.SUCCEEDED, {"stale": True}, None
        )
        lost = await leases.renew_leases(session, {task_id: uuid.uuid4()}, 60)
    assert (stale, lost) == (False, {task_id})
    task = await load(sessionmaker, task_id)
    assert task.status == TaskStatus.RUNNING
    assert task.lease_token == current
    assert task.result is None


async def test_the_lease_is_renewed_while_the_scan_runs_so_nobody_takes_it_over(
    runtime: WorkerRuntime, scanner: GatedScanner, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    tune(runtime, worker_lease_s=0.3)
    scanner.release.clear()
    task_id = await committed_task(sessionmaker)
    run = asyncio.create_task(run_task(runtime, task_id))
    await eventually(lambda: scanner.running == 1, "the scan to start")
    first_expiry = (await load(sessionmaker, task_id)).lease_expires_at

    async def renewed_twice() -> bool:
        expiry = (await load(sessionmaker, task_id)).lease_expires_at
        return expiry is not None and first_expiry is not None and expiry > first_expiry

    await eventually(renewed_twice, "a renewal")
    await eventually(renewed_twice, "another renewal")
    # Well past the first lease, a second delivery still finds the task held.
    assert await run_task(runtime, task_id) == Outcome.SKIPPED
    scanner.release.set()
    assert await run == Outcome.SUCCEEDED
    assert scanner.calls == ["example.com"]


async def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced_off(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    task_id = await committed_task(sessionmaker)
    async with sessionmaker() as session, session.begin():
        old = await claim_one(session, task_id, "stalled", 0.05)

    async def expired() -> bool:
        async with sessionmaker() as session:
            stmt = select(Task.lease_expires_at < func.now()).where(Task.id == task_id)
            return bool((await session.execute(stmt)).scalar_one())

    await eventually(expired, "the stalled worker's lease to expire")
    assert await run_task(runtime, task_id) == Outcome.SUCCEEDED
    async with sessionmaker() as session, session.begin():
        lost = await leases.renew_leases(session, {task_id: old}, 60)
        overwritten = await finish_one(
            session, task_id, old, TaskStatus.FAILED, {"late": True}, "late"
        )
    assert (lost, overwritten) == ({task_id}, False)
    task = await load(sessionmaker, task_id)
    assert (task.status, task.result, task.attempts) == (
        TaskStatus.SUCCEEDED,
        {"domain": "example.com", "ok": True},
        2,
    )


async def test_cancel_stops_a_running_scan_at_its_next_renewal_without_a_result(
    runtime: WorkerRuntime, scanner: GatedScanner, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    tune(runtime, worker_lease_s=0.3)
    scanner.release.clear()
    task_id = await committed_task(sessionmaker)
    run = asyncio.create_task(run_task(runtime, task_id))
    await eventually(lambda: scanner.running == 1, "the scan to start")
    task = await load(sessionmaker, task_id)
    async with sessionmaker() as session, session.begin():
        assert await tasks.cancel_task(session, task.user_id, task_id) is not None

    assert await run == Outcome.CANCELLED
    assert scanner.cancelled == 1
    task = await load(sessionmaker, task_id)
    assert (task.status, task.result, task.error) == (TaskStatus.CANCELLED, None, None)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (TimeoutError(), "worker-side timeout"),
        (OSError("too many open files"), "OSError: too many open files"),
        (
            OperationalError("SELECT 1", {}, Exception("connection reset")),
            "OperationalError: (builtins.Exception) connection reset",
        ),
    ],
)
async def test_an_infrastructure_error_sends_the_task_round_again_with_backoff(
    runtime: WorkerRuntime,
    sessionmaker: async_sessionmaker[AsyncSession],
    error: BaseException,
    reason: str,
) -> None:
    runtime.scanner = GatedScanner(error=error)
    task_id = await committed_task(sessionmaker)
    before = datetime.now(UTC)

    assert await run_task(runtime, task_id) == Outcome.RETRYING

    task = await load(sessionmaker, task_id)
    assert (task.status, task.attempts, task.lease_token) == (TaskStatus.PENDING, 1, None)
    assert task.error is not None
    assert task.error.startswith(reason)
    first, again = await outbox_of(sessionmaker, task_id)
    assert again.payload == {"task_id": str(task_id)}
    assert again.available_at > before
    assert again.available_at >= first.available_at


async def test_retries_stop_at_max_attempts_and_fail_with_the_reason(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    runtime.scanner = GatedScanner(error=TimeoutError())
    task_id = await committed_task(sessionmaker, max_attempts=2)

    # Each delivery stands for the relay publishing the next outbox row once due.
    assert await run_task(runtime, task_id) == Outcome.RETRYING
    assert await run_task(runtime, task_id) == Outcome.FAILED

    task = await load(sessionmaker, task_id)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 2)
    assert task.error == "gave up after 2 attempts: worker-side timeout"
    assert len(await outbox_of(sessionmaker, task_id)) == 2


async def test_backoff_grows_between_attempts(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    tune(runtime, retry_backoff_base_s=100.0, retry_backoff_max_s=10_000.0)
    runtime.scanner = GatedScanner(error=TimeoutError())
    task_id = await committed_task(sessionmaker, max_attempts=3)
    assert await run_task(runtime, task_id) == Outcome.RETRYING
    assert await run_task(runtime, task_id) == Outcome.RETRYING

    _first, second, third = await outbox_of(sessionmaker, task_id)
    # Attempt 1 waits 100 s, attempt 2 waits 200 s, each less up to a quarter of jitter.
    assert 75 <= (second.available_at - second.created_at).total_seconds() <= 100.5
    assert 150 <= (third.available_at - third.created_at).total_seconds() <= 200.5


async def test_a_task_without_attempts_left_is_failed_instead_of_claimed(
    runtime: WorkerRuntime, scanner: GatedScanner, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    task_id = await committed_task(sessionmaker, max_attempts=2)
    async with sessionmaker() as session, session.begin():
        stmt = update(Task).where(Task.id == task_id).values(attempts=2, error="worker died")
        await session.execute(stmt)

    assert await run_task(runtime, task_id) == Outcome.FAILED

    task = await load(sessionmaker, task_id)
    assert (task.status, task.error) == (TaskStatus.FAILED, "gave up after 2 attempts: worker died")
    assert scanner.calls == []


async def test_facts_about_an_unreachable_target_are_a_successful_result(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    from worker_service.scanner import scan_domain

    runtime.scanner = scan_domain
    tune(
        runtime,
        resolver_overrides={"refusing.example": "127.0.0.1", "broken.example": "not-an-ip"},
        allow_private=True,
        schemes=["http"],
        http_port=1,
    )
    refusing = await committed_task(sessionmaker, "refusing.example")
    broken = await committed_task(sessionmaker, "broken.example")

    assert await run_task(runtime, refusing) == Outcome.SUCCEEDED
    assert await run_task(runtime, broken) == Outcome.SUCCEEDED

    refused = (await load(sessionmaker, refusing)).result
    unresolved = (await load(sessionmaker, broken)).result
    assert refused is not None
    assert unresolved is not None
    assert refused["http"]["error"] == "connection refused"
    assert unresolved["dns"]["error"] == "'not-an-ip' is not an IP address"
