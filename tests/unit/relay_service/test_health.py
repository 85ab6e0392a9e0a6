"""The probes' routing, with doubles for the relay and its checks."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette

from relay_service.probe_server import build_app


class FakeRelay:
    def __init__(self, age_s: float) -> None:
        self.age_s = age_s

    def seconds_since_beat(self) -> float:
        return self.age_s


class FakeReadiness:
    def __init__(self, **checks: str) -> None:
        self.checks = checks

    async def check(self) -> dict[str, str]:
        return self.checks


async def get(app: Starlette, path: str, method: str = "GET") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
        return await client.request(method, path)


async def test_livez_fails_once_the_loop_has_not_turned_for_too_long() -> None:
    ready = FakeReadiness(database="ok", broker="ok")
    assert (await get(build_app(FakeRelay(1.0), ready, 30), "/livez")).status_code == 200
    stalled = await get(build_app(FakeRelay(31.0), ready, 30), "/livez")
    assert stalled.status_code == 503
    assert stalled.json()["status"] == "stalled"


@pytest.mark.parametrize(
    ("checks", "status"),
    [({"database": "ok", "broker": "ok"}, 200), ({"database": "ok", "broker": "down"}, 503)],
)
async def test_readyz_needs_both_the_database_and_the_broker(
    checks: dict[str, str], status: int
) -> None:
    response = await get(build_app(FakeRelay(0), FakeReadiness(**checks), 30), "/readyz")
    assert response.status_code == status
    assert response.json()["broker"] == checks["broker"]


async def test_metrics_are_prometheus_text() -> None:
    response = await get(build_app(FakeRelay(0), FakeReadiness(), 30), "/metrics")
    assert response.status_code == 200
    assert "scan_outbox_messages_published_total" in response.text


async def test_unknown_paths_and_methods_are_refused() -> None:
    app = build_app(FakeRelay(0), FakeReadiness(), 30)
    assert (await get(app, "/nope")).status_code == 404
    assert (await get(app, "/livez", method="POST")).status_code == 405
