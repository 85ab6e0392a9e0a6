"""SCAN_REDIS_SAFEGUARDS=false: no rate limit, lock, marker or marker check; the database alone
decides, and creates, idempotent replays and worker runs behave as before."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import keys, safeguards
from shared.settings import Settings
from tests.helpers import api_client, count_rows, make_user
from tests.workers import GatedScanner, committed_task, worker_settings
from worker_service.lifecycle import Outcome, run_task
from worker_service.runtime import WorkerRuntime


@pytest.fixture
def off(settings: Settings) -> Settings:
    # A limit the test would pass at once if it were applied.
    update = {"redis_safeguards": False, "rate_limit_per_minute": 60, "rate_limit_burst": 1}
    return settings.model_copy(update=update)


@pytest.fixture
async def client(off: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(off) as http:
        yield http


async def test_creates_are_not_rate_limited_and_leave_nothing_in_redis(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    _, token = await make_user(sessionmaker, "alice")
    headers = {"Authorization": f"Bearer {token}"}
    for n in range(3):
        body = {"target_domain": f"off{n}.example.com"}
        response = await client.post("/api/v1/tasks", json=body, headers=headers)
        assert response.status_code == 201
    assert await count_rows(sessionmaker) == (3, 3)
    assert redis_client.keys("*") == []


async def test_an_idempotent_replay_still_returns_the_same_task_without_a_lock(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    _, token = await make_user(sessionmaker, "bob")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k-1"}
    body = {"target_domain": "once.example.com"}
    first = await client.post("/api/v1/tasks", json=body, headers=headers)
    again = await client.post("/api/v1/tasks", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["id"] == again.json()["id"]
    assert await count_rows(sessionmaker) == (1, 1)
    assert redis_client.keys("*") == []


async def test_the_lock_is_not_taken_nor_waited_for(
    off: Settings, redis_client: redis.Redis
) -> None:
    name = keys.create_lock(1, "busy")
    redis_client.set(name, "someone else", ex=30)
    client = safeguards.create_redis(off.model_copy(update={"lock_wait_s": 2.0}))
    started = time.monotonic()
    try:
        async with safeguards.optional_lock(client, name, off) as acquired:
            assert acquired is False
    finally:
        await client.aclose()
    assert time.monotonic() - started < 0.5
    assert redis_client.get(name) == b"someone else"


async def test_the_worker_asks_the_database_even_when_a_marker_exists(
    off: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    tuned = worker_settings(off, existence_check_attempts=5)
    client = safeguards.create_redis(tuned)
    runtime = WorkerRuntime(tuned, engine, sessionmaker, GatedScanner(), client, owner="w")
    task_id = await committed_task(sessionmaker)
    redis_client.set(keys.task_created_marker(task_id), "1", ex=300)
    before = REGISTRY.get_sample_value("scan_outbox_existence_check_retries_total") or 0.0
    try:
        assert await run_task(runtime, task_id) == Outcome.SUCCEEDED
    finally:
        await client.aclose()
    # Found at the first look, by the database alone.
    assert (REGISTRY.get_sample_value("scan_outbox_existence_check_retries_total") or 0.0) == before
