"""The relay's probes on their own port: /livez, /readyz and /metrics (Prometheus).

A small Starlette app served by uvicorn inside the relay's own event loop, so a
wedged loop shows as a probe that does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import uvicorn
from dramatiq.brokers.redis import RedisBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.db import housekeeping
from shared.dramatiq_private import client_of
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

CHECK_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 5.0


class Beating(Protocol):
    def seconds_since_beat(self) -> float: ...


class Checking(Protocol):
    async def check(self) -> dict[str, str]: ...


class Readiness:
    """Can this relay do its job: does the database answer, and the broker?"""

    def __init__(self, engine: AsyncEngine, broker: RedisBroker) -> None:
        self.engine = engine
        self.broker = broker

    async def _database(self) -> None:
        async with self.engine.connect() as connection:
            await housekeeping.ping(connection)

    async def _broker(self) -> None:
        await asyncio.to_thread(client_of(self.broker).ping)

    async def check(self) -> dict[str, str]:
        checks = {"database": self._database, "broker": self._broker}
        return {name: await _status(probe) for name, probe in checks.items()}


async def _status(probe: Callable[[], Awaitable[None]]) -> str:
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT_S)
    except (SQLAlchemyError, RedisError, OSError):  # TimeoutError is an OSError
        return "down"
    return "ok"


def build_app(relay: Beating, readiness: Checking, livez_max_age_s: float) -> Starlette:
    """The three probe routes; anything else is 404, any other method 405."""

    async def livez(_: Request) -> Response:
        age_s = relay.seconds_since_beat()
        alive = age_s <= livez_max_age_s
        body = {"status": "ok" if alive else "stalled", "loop_age_s": round(age_s, 3)}
        return JSONResponse(body, 200 if alive else 503)

    async def readyz(_: Request) -> Response:
        checks = await readiness.check()
        ready = all(state == "ok" for state in checks.values())
        body = {"status": "ready" if ready else "not_ready", **checks}
        return JSONResponse(body, 200 if ready else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/livez", livez), Route("/readyz", readyz), Route("/metrics", metrics)]
    )


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The relay owns SIGINT/SIGTERM and stops this server itself.
        yield


class HealthServer:
    """Serves the probes on `relay_health_host:relay_health_port` until closed."""

    def __init__(self, settings: Settings, relay: Beating, readiness: Checking) -> None:
        self.settings = settings
        self.app = build_app(relay, readiness, settings.relay_livez_max_age_s)
        self._socket: socket.socket | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind the port (OSError when it is taken), then serve in the background."""
        self._socket = socket.create_server(
            (self.settings.relay_health_host, self.settings.relay_health_port), reuse_port=False
        )
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off")
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        log.info("relay_probes_listening", port=self.port)

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the health server is not started")
        return int(self._socket.getsockname()[1])

    async def close(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
        if self._socket is not None:
            self._socket.close()
