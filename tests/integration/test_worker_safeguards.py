"""The worker's existence check: the database, then the Redis marker; Redis may be down.

Its job is messages that did not come through the outbox: a producer that sends before it
commits gets its task run once the row appears, and a message whose task never commits is
dropped after the retry budget with a log line saying why."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from shared import keys, safeguards
from shared.db import tasks
from shared.db.models import TaskStatus
from shared.embedded import free_port
from shared.messages import scan_entry
from shared.settings import Settings
from tests.helpers import eventually, make_user
from tests.workers import GatedScanner, committed_task, load, worker_settings
from worker_service.lifecycle import Outcome, run_task
from worker_service.runtime import WorkerRuntime


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def retries() -> float:
    return sample("scan_outbox_existence_check_retries_total")


@pytest.fixture
async def runtime(
    settings: Settings, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[WorkerRuntime]:
    tuned = worker_settings(settings, existence_check_attempts=5)
    client = safeguards.create_redis(tuned)
    yield WorkerRuntime(tuned, engine, sessionmaker, GatedScanner(), client, owner="w")
    await client.aclose()


class FailingRedis:
    """A Redis client that fails every call: the test fails if the check asks it anything."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"Redis was asked ({name}) although the database had the task")


async def redis_down(runtime: WorkerRuntime) -> None:
    """Point the worker's safeguards at a port nobody listens on."""
    runtime.settings = runtime.settings.model_copy(
        update={"redis_url": SecretStr(f"redis://127.0.0.1:{free_port()}/0")}
    )
    await runtime.redis.aclose()
    runtime.redis = safeguards.create_redis(runtime.settings)


async def test_a_committed_task_is_verified_by_the_database_without_asking_redis(
    runtime: WorkerRuntime,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    task_id = await committed_task(sessionmaker)
    redis_client.set(keys.task_created_marker(task_id), "1", ex=300)
    before = retries()
    runtime.redis = FailingRedis()  # type: ignore[assignment]
    # FailingRedis raises if asked: the claim found the task in the database at once.
    assert await run_task(runtime, task_id) == Outcome.SUCCEEDED
    assert retries() == before
    assert (await load(sessionmaker, task_id)).attempts == 1


async def test_a_marked_task_the_database_no_longer_has_is_dropped_at_once(
    runtime: WorkerRuntime,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    # Committed (so marked), then deleted: waiting for it cannot help.
    task_id = uuid.uuid4()
    redis_client.set(keys.task_created_marker(task_id), "1", ex=300)
    before = retries()
    with capture_logs() as logs:
        assert await run_task(runtime, task_id) == Outcome.SKIPPED
    assert retries() == before
    assert [entry["event"] for entry in logs if entry.get("task_id") == str(task_id)] == [
        "task_deleted"
    ]


async def test_a_producer_that_sends_before_it_commits_gets_its_task_run_once_committed(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    user, _ = await make_user(sessionmaker)
    task_id = uuid.uuid4()
    new = tasks.NewTask(user_id=user.id, target_domain="example.com", config={}, max_attempts=3)
    before = retries()
    async with sessionmaker() as session:
        transaction = await session.begin()
        await tasks.insert_task_with_message(session, task_id, new, scan_entry(task_id, "scans"))
        run = asyncio.create_task(run_task(runtime, task_id))
        # Commit only once the worker has looked, missed and scheduled another look.
        await eventually(lambda: retries() > before, "an existence-check retry")
        await transaction.commit()
    assert await run == Outcome.SUCCEEDED
    assert retries() >= before + 1


async def test_an_unknown_task_is_given_up_after_the_configured_attempts(
    runtime: WorkerRuntime,
) -> None:
    before = retries()
    with capture_logs() as logs:
        assert await run_task(runtime, uuid.uuid4()) == Outcome.SKIPPED
    assert retries() == before + 4
    [line] = [entry for entry in logs if entry["event"] == "task_not_found"]
    assert line["attempts"] == 5
    assert "never committed" in str(line["detail"])


async def test_the_worker_runs_tasks_with_the_safeguard_redis_down(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await redis_down(runtime)
    task_id = await committed_task(sessionmaker)
    failures = sample("scan_outbox_safeguard_failures_total", {"safeguard": "marker_check"})

    assert await run_task(runtime, task_id) == Outcome.SUCCEEDED

    assert (await load(sessionmaker, task_id)).status == TaskStatus.SUCCEEDED
    # The database had the task: Redis was not needed, so nothing failed.
    after = sample("scan_outbox_safeguard_failures_total", {"safeguard": "marker_check"})
    assert after == failures


async def test_a_late_task_is_still_waited_for_with_the_safeguard_redis_down(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await redis_down(runtime)
    failures = sample("scan_outbox_safeguard_failures_total", {"safeguard": "marker_check"})
    with capture_logs() as logs:
        assert await run_task(runtime, uuid.uuid4()) == Outcome.SKIPPED
    assert [entry["attempts"] for entry in logs if entry["event"] == "task_not_found"] == [5]
    after = sample("scan_outbox_safeguard_failures_total", {"safeguard": "marker_check"})
    assert after == failures + 5
