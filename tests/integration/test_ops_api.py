"""The admin health endpoint and the API's /metrics, against real PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service.app import create_app
from shared.embedded import RedisProcess
from shared.settings import Settings
from tests.helpers import make_user


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis of this test's own, so stopping it disturbs no other test."""
    server = RedisProcess(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(
    settings: Settings, own_redis: RedisProcess, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    app_settings = settings.model_copy(update={"redis_url": SecretStr(own_redis.url)})
    app = create_app(app_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_health_is_for_admins_only(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, user_token = await make_user(sessionmaker, "user")
    assert (await client.get("/api/v1/ops/health")).status_code == 401
    forbidden = await client.get("/api/v1/ops/health", headers=bearer(user_token))
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "forbidden"


async def test_health_turns_503_with_reasons_when_redis_stops(
    client: httpx.AsyncClient,
    own_redis: RedisProcess,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    _, token = await make_user(sessionmaker, "root", admin=True)
    healthy = await client.get("/api/v1/ops/health", headers=bearer(token))
    assert healthy.status_code == 200, healthy.text
    body = healthy.json()
    assert body["healthy"] is True
    assert body["redis"] == {"reachable": True}
    assert body["outbox"]["backlog"] == 0
    assert set(body) >= {"tasks", "orphans", "database", "broker", "checked_at", "reasons"}

    own_redis.stop()
    unhealthy = await client.get("/api/v1/ops/health", headers=bearer(token))
    assert unhealthy.status_code == 503
    assert unhealthy.json()["reasons"] == ["Redis is unreachable"]
    assert unhealthy.json()["database"] == {"reachable": True}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_requests_by_route_template_and_created_tasks(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await make_user(sessionmaker)
    route = "/api/v1/tasks/{task_id}"
    requests = "scan_outbox_http_requests_total"
    before_get = sample(requests, method="GET", route=route, status="404")
    before_unmatched = sample(requests, method="GET", route="unmatched", status="404")
    before_created = sample("scan_outbox_tasks_created_total")

    missing = uuid.uuid4()
    await client.get(f"/api/v1/tasks/{missing}", headers=bearer(token))
    await client.get(f"/no/such/{missing}")
    created = await client.post(
        "/api/v1/tasks", json={"target_domain": "example.com"}, headers=bearer(token)
    )
    assert created.status_code == 201

    assert sample(requests, method="GET", route=route, status="404") == before_get + 1
    assert sample(requests, method="GET", route="unmatched", status="404") == before_unmatched + 1
    assert sample("scan_outbox_tasks_created_total") == before_created + 1
    exposition = await client.get("/metrics")
    assert exposition.status_code == 200
    assert exposition.headers["content-type"].startswith("text/plain")
    assert f'route="{route}"' in exposition.text
    assert "scan_outbox_http_request_duration_seconds_bucket" in exposition.text
    assert str(missing) not in exposition.text
