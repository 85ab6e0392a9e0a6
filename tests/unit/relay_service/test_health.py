"""The probes' routing and request parsing, with doubles for the relay and its checks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from relay_service.health import HealthServer, read_request
from shared.settings import Settings


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


def server(relay: Any, readiness: Any) -> HealthServer:
    settings = Settings(relay_livez_max_age_s=30, _env_file=None)  # type: ignore[call-arg]
    return HealthServer(settings, relay, readiness)


async def test_livez_fails_once_the_loop_has_not_turned_for_too_long() -> None:
    ready = FakeReadiness(database="ok", broker="ok")
    assert (await server(FakeRelay(1.0), ready).respond("GET", "/livez")).status == 200
    stalled = await server(FakeRelay(31.0), ready).respond("GET", "/livez")
    assert stalled.status == 503
    assert json.loads(stalled.body)["status"] == "stalled"


@pytest.mark.parametrize(
    ("checks", "status"),
    [({"database": "ok", "broker": "ok"}, 200), ({"database": "ok", "broker": "down"}, 503)],
)
async def test_readyz_needs_both_the_database_and_the_broker(
    checks: dict[str, str], status: int
) -> None:
    response = await server(FakeRelay(0), FakeReadiness(**checks)).respond("GET", "/readyz")
    assert response.status == status
    assert json.loads(response.body)["broker"] == checks["broker"]


async def test_unknown_paths_and_methods_are_refused() -> None:
    probes = server(FakeRelay(0), FakeReadiness())
    assert (await probes.respond("GET", "/nope")).status == 404
    assert (await probes.respond("POST", "/livez")).status == 405


async def test_a_request_line_and_its_headers_are_read_up_to_the_blank_line() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\nBODY")
    assert await read_request(reader) == ("GET", "/metrics")


async def test_a_garbled_request_line_is_an_error() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"hello\r\n\r\n")
    with pytest.raises(ValueError, match="values to unpack"):
        await read_request(reader)
