"""Retry, cancel and the create/retry safeguards over HTTP, against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from shared import keys
from shared.db.models import OutboxMessage, Task, TaskStatus
from shared.embedded import free_port
from shared.settings import Settings
from tests.helpers import api_client, count_rows, make_user


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers, like a Redis that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture
async def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(http: httpx.AsyncClient, headers: dict[str, str], **extra: str) -> str:
    response = await http.post(
        "/api/v1/tasks", json={"target_domain": "example.com"}, headers={**headers, **extra}
    )
    assert response.status_code in (200, 201), response.text
    task_id: str = response.json()["id"]
    return task_id


async def set_status(
    sessionmaker: async_sessionmaker[AsyncSession], task_id: str, status: TaskStatus, **values: Any
) -> None:
    async with sessionmaker() as session, session.begin():
        stmt = update(Task).where(Task.id == uuid.UUID(task_id))
        await session.execute(stmt.values(status=status.value, **values))


async def messages(sessionmaker: async_sessionmaker[AsyncSession], task_id: str) -> int:
    async with sessionmaker() as session:
        stmt = select(OutboxMessage).where(OutboxMessage.task_id == uuid.UUID(task_id))
        return len((await session.execute(stmt)).all())


def lock_failures() -> float:
    labels = {"safeguard": "lock"}
    return REGISTRY.get_sample_value("scan_outbox_safeguard_failures_total", labels) or 0.0


@pytest.mark.parametrize("status", [TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING])
async def test_cancel_moves_any_unfinished_task_to_cancelled(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
    status: TaskStatus,
) -> None:
    task_id = await create(client, headers)
    await set_status(sessionmaker, task_id, status, lease_token=uuid.uuid4())

    response = await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["result"]) == ("cancelled", None)
    assert body["finished_at"] is not None
    async with sessionmaker() as session:
        task = await session.get(Task, uuid.UUID(task_id))
    assert task is not None
    assert task.lease_token is None


@pytest.mark.parametrize("status", [TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED])
async def test_cancelling_a_finished_task_is_409_naming_its_state(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
    status: TaskStatus,
) -> None:
    task_id = await create(client, headers)
    await set_status(sessionmaker, task_id, status)

    response = await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=headers)

    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["code"], error["current_status"]) == ("invalid_state", status.value)
    assert status.value in error["message"]


@pytest.mark.parametrize("status", [TaskStatus.FAILED, TaskStatus.CANCELLED])
async def test_retry_restarts_the_task_with_a_new_outbox_row(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
    status: TaskStatus,
) -> None:
    task_id = await create(client, headers)
    await set_status(sessionmaker, task_id, status, attempts=3, error="gave up", result={"x": 1})
    redis_client.delete(keys.task_created_marker(task_id))

    response = await client.post(
        f"/api/v1/tasks/{task_id}/retry", headers={**headers, "X-Request-ID": "retry-1"}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["attempts"], body["max_attempts"]) == ("pending", 0, 3)
    assert body["redispatches"] == 0
    assert (body["error"], body["result"], body["finished_at"]) == (None, None, None)
    assert await messages(sessionmaker, task_id) == 2
    async with sessionmaker() as session:
        stmt = select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(1)
        newest = (await session.execute(stmt)).scalar_one()
    assert newest.payload == {"task_id": task_id, "request_id": "retry-1"}
    assert newest.published_at is None
    assert redis_client.exists(keys.task_created_marker(task_id)) == 1


@pytest.mark.parametrize(
    "status", [TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED]
)
async def test_retrying_a_task_that_did_not_fail_is_409_and_writes_nothing(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
    status: TaskStatus,
) -> None:
    task_id = await create(client, headers)
    await set_status(sessionmaker, task_id, status)

    response = await client.post(f"/api/v1/tasks/{task_id}/retry", headers=headers)

    assert response.status_code == 409
    assert response.json()["error"]["current_status"] == status.value
    assert await messages(sessionmaker, task_id) == 1


@pytest.mark.parametrize("action", ["retry", "cancel"])
async def test_another_users_or_a_missing_task_is_404(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
    action: str,
) -> None:
    task_id = await create(client, headers)
    await set_status(sessionmaker, task_id, TaskStatus.FAILED)
    _, other_token = await make_user(sessionmaker, "mallory")
    other = {"Authorization": f"Bearer {other_token}"}

    theirs = await client.post(f"/api/v1/tasks/{task_id}/{action}", headers=other)
    missing = await client.post(f"/api/v1/tasks/{uuid.uuid4()}/{action}", headers=headers)

    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    async with sessionmaker() as session:
        task = await session.get(Task, uuid.UUID(task_id))
    assert task is not None
    assert task.status == TaskStatus.FAILED


async def test_concurrent_retries_send_the_task_round_once(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    task_id = await create(client, headers)
    await set_status(sessionmaker, task_id, TaskStatus.FAILED)

    responses = await asyncio.gather(
        *(client.post(f"/api/v1/tasks/{task_id}/retry", headers=headers) for _ in range(5))
    )

    assert sorted(response.status_code for response in responses) == [200] + [409] * 4
    assert await messages(sessionmaker, task_id) == 2


async def test_concurrent_creates_with_one_idempotency_key_make_one_task(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    keyed = {**headers, "Idempotency-Key": "burst-1"}
    body = {"target_domain": "example.com"}

    responses = await asyncio.gather(
        *(client.post("/api/v1/tasks", json=body, headers=keyed) for _ in range(8))
    )

    # One creates; each other one is told the first is still in flight (409) or, arriving
    # after it, gets its answer again (201, marked as a replay).
    assert {response.status_code for response in responses} <= {201, 409}
    answered = [response for response in responses if response.status_code == 201]
    assert sum("idempotent-replayed" not in r.headers for r in answered) == 1
    assert len({response.json()["id"] for response in answered}) == 1
    assert await count_rows(sessionmaker) == (1, 1)


async def test_create_logs_the_line_operators_grep_for(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    with capture_logs() as logs:
        task_id = await create(client, headers)
    [line] = [entry for entry in logs if entry["event"] == "task created and marked"]
    assert (line["task_id"], line["marked"]) == (task_id, True)


@pytest.mark.parametrize("kind", ["stopped", "hanging"])
async def test_create_and_retry_work_with_redis_stopped_or_hanging(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    headers: dict[str, str],
    black_hole: int,
    kind: str,
) -> None:
    port = free_port() if kind == "stopped" else black_hole
    broken = settings.model_copy(
        update={"redis_url": SecretStr(f"redis://127.0.0.1:{port}/0"), "redis_timeout_s": 0.2}
    )
    before = lock_failures()
    async with api_client(broken) as http:
        with capture_logs() as logs:
            task_id = await create(http, headers, **{"Idempotency-Key": "k-1"})
        await set_status(sessionmaker, task_id, TaskStatus.CANCELLED)
        retried = await http.post(f"/api/v1/tasks/{task_id}/retry", headers=headers)
        assert retried.status_code == 200, retried.text
        assert retried.json()["status"] == "pending"
    [line] = [entry for entry in logs if entry["event"] == "task created and marked"]
    assert line["marked"] is False
    assert lock_failures() == before + 2
    assert await messages(sessionmaker, task_id) == 2


async def test_with_the_database_down_readyz_stays_ready_and_requests_get_the_json_503(
    settings: Settings,
) -> None:
    # Nothing listens there: every database call fails at once, as in an outage.
    down = settings.model_copy(
        update={"database_url": SecretStr(f"postgresql://postgres@127.0.0.1:{free_port()}/x")}
    )
    async with api_client(down) as http:
        ready = await http.get("/readyz")
        created = await http.post(
            "/api/v1/tasks",
            json={"target_domain": "example.com"},
            headers={"Authorization": "Bearer whatever"},
        )

    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "down", "redis": "ok"}
    assert created.status_code == 503
    assert created.json()["error"]["code"] == "unavailable"
