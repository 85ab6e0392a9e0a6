"""The worker's secondary existence check: Redis marker, then the database; Redis may be down."""

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
from shared.db import queries
from shared.db.models import TaskStatus
from shared.embedded import free_port
from shared.messages import scan_entry
from shared.settings import Settings
from tests.helpers import make_user
from tests.workers import GatedScanner, committed_task, eventually, load, worker_settings
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


def verified(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [entry for entry in logs if entry["event"] == "task verified"]


async def test_the_marker_verifies_a_task_before_the_database_is_asked(
    runtime: WorkerRuntime,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    task_id = await committed_task(sessionmaker)
    redis_client.set(keys.task_created_marker(task_id), "1", ex=300)
    with capture_logs() as logs:
        assert await run_task(runtime, task_id) == Outcome.SUCCEEDED
    [line] = verified(logs)
    assert (line["task_id"], line["source"], line["attempt"]) == (str(task_id), "marker", 1)


async def test_without_a_marker_the_database_answers_at_once(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    task_id = await committed_task(sessionmaker)
    before = retries()
    with capture_logs() as logs:
        assert await run_task(runtime, task_id) == Outcome.SUCCEEDED
    [line] = verified(logs)
    assert (line["source"], line["attempt"]) == ("database", 1)
    assert retries() == before


async def test_a_task_seen_late_is_retried_counted_and_then_run(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    user, _ = await make_user(sessionmaker)
    task_id = uuid.uuid4()
    new = queries.NewTask(user_id=user.id, target_domain="example.com", config={}, max_attempts=3)
    before = retries()
    async with sessionmaker() as session:
        transaction = await session.begin()
        await queries.insert_task_with_message(session, task_id, new, scan_entry(task_id, "scans"))
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
    assert [entry["attempts"] for entry in logs if entry["event"] == "task_not_found"] == [5]


async def test_the_worker_runs_tasks_with_the_safeguard_redis_down(
    runtime: WorkerRuntime, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    runtime.settings = runtime.settings.model_copy(
        update={"redis_url": SecretStr(f"redis://127.0.0.1:{free_port()}/0")}
    )
    await runtime.redis.aclose()
    runtime.redis = safeguards.create_redis(runtime.settings)
    task_id = await committed_task(sessionmaker)
    failures = sample("scan_outbox_safeguard_failures_total", {"safeguard": "marker_check"})

    with capture_logs() as logs:
        assert await run_task(runtime, task_id) == Outcome.SUCCEEDED

    assert (await load(sessionmaker, task_id)).status == TaskStatus.SUCCEEDED
    assert verified(logs)[0]["source"] == "database"
    after = sample("scan_outbox_safeguard_failures_total", {"safeguard": "marker_check"})
    assert after == failures + 1
