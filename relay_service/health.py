"""The relay's probes on their own port: /livez, /readyz and /metrics (Prometheus).

A few lines of asyncio serve three GET routes inside the relay's own loop, so
a wedged loop shows as a probe that does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dramatiq.brokers.redis import RedisBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from relay_service.relay import Relay
from shared.db import queries
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

READ_TIMEOUT_S = 5.0
CHECK_TIMEOUT_S = 2.0
MAX_HEADER_LINES = 100
JSON = "application/json"


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


def json_response(status: int, payload: dict[str, object]) -> Response:
    return Response(status, JSON, json.dumps(payload).encode())


REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class Readiness:
    """Can this relay do its job: does the database answer, and the broker?"""

    def __init__(self, engine: AsyncEngine, broker: RedisBroker) -> None:
        self.engine = engine
        self.broker = broker

    async def _database(self) -> None:
        async with self.engine.connect() as connection:
            await queries.ping(connection)

    async def _broker(self) -> None:
        await asyncio.to_thread(self.broker.client.ping)

    async def check(self) -> dict[str, str]:
        checks = {"database": self._database, "broker": self._broker}
        return {name: await _status(probe) for name, probe in checks.items()}


async def _status(probe: Callable[[], Awaitable[None]]) -> str:
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT_S)
    except (SQLAlchemyError, RedisError, OSError):  # TimeoutError is an OSError
        return "down"
    return "ok"


class HealthServer:
    """Serves the probes on `relay_health_host:relay_health_port` until closed."""

    def __init__(self, settings: Settings, relay: Relay, readiness: Readiness) -> None:
        self.settings = settings
        self.relay = relay
        self.readiness = readiness
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind the port; raises OSError when it is taken."""
        self.server = await asyncio.start_server(
            self._handle, self.settings.relay_health_host, self.settings.relay_health_port
        )
        log.info("relay_probes_listening", port=self.port)

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("the health server is not started")
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def respond(self, method: str, path: str) -> Response:
        if method != "GET":
            return json_response(405, {"error": "method not allowed"})
        if path == "/livez":
            age_s = self.relay.seconds_since_beat()
            alive = age_s <= self.settings.relay_livez_max_age_s
            body: dict[str, object] = {"status": "ok" if alive else "stalled"}
            return json_response(200 if alive else 503, {**body, "loop_age_s": round(age_s, 3)})
        if path == "/readyz":
            checks = await self.readiness.check()
            ready = all(state == "ok" for state in checks.values())
            status = "ready" if ready else "not_ready"
            return json_response(200 if ready else 503, {"status": status, **checks})
        if path == "/metrics":
            return Response(200, CONTENT_TYPE_LATEST, generate_latest())
        return json_response(404, {"error": "not found"})

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path = await asyncio.wait_for(read_request(reader), READ_TIMEOUT_S)
            response = await self.respond(method, path)
        except (ValueError, TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            response = json_response(400, {"error": "bad request"})
        head = (
            f"HTTP/1.1 {response.status} {REASONS.get(response.status, '')}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode("latin-1") + response.body)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """(method, path) of one HTTP/1.x request; its headers are read and ignored."""
    request_line = (await reader.readline()).decode("latin-1")
    for _ in range(MAX_HEADER_LINES):
        if (await reader.readline()) in (b"\r\n", b"\n", b""):
            break
    else:
        raise ValueError("too many header lines")
    method, target, _version = request_line.split(" ", 2)
    return method, target.split("?", 1)[0]
