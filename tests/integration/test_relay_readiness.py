"""The relay's readiness against real servers: each of the database and the broker can fail it."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from relay_service.probe_server import Readiness, build_app
from shared.db.engine import create_engine
from shared.dramatiq_broker import create_broker
from shared.embedded import free_port
from shared.settings import Settings


class Beating:
    def seconds_since_beat(self) -> float:
        return 0.0


def nowhere(scheme: str) -> SecretStr:
    suffix = "/scan_outbox" if scheme == "postgresql" else "/0"
    return SecretStr(f"{scheme}://127.0.0.1:{free_port()}{suffix}")


@pytest.mark.parametrize(
    ("down", "expected"),
    [
        ((), {"status": "ready", "database": "ok", "broker": "ok"}),
        (("database",), {"database": "down", "broker": "ok"}),
        (("broker",), {"database": "ok", "broker": "down"}),
        (("database", "broker"), {"database": "down", "broker": "down"}),
    ],
)
async def test_readyz_reports_each_server_and_needs_both(
    settings: Settings, down: tuple[str, ...], expected: dict[str, str]
) -> None:
    tuned = settings.model_copy(
        update={
            "database_url": nowhere("postgresql") if "database" in down else settings.database_url,
            "broker_url": nowhere("redis") if "broker" in down else None,
        }
    )
    engine = create_engine(tuned)
    broker = create_broker(tuned, middleware=[], socket_timeout_s=1.0)
    app = build_app(Beating(), Readiness(engine, broker), 30)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
            response = await client.get("/readyz")
    finally:
        broker.client.connection_pool.disconnect()
        await engine.dispose()
    assert response.status_code == (503 if down else 200)
    body = response.json()
    assert {key: body[key] for key in expected} == expected
