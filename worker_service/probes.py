"""The worker's /livez and /readyz, served beside /metrics by the exposition fork.

The fork shares no memory with the worker processes: it judges the progress files they write
(`worker_service.progress`). /livez is 200 while every worker process's event loop ticks and
its consumers turn; a broker outage never fails it, since a restart would not cure that.
/readyz also needs the broker to answer a PING.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from shared import redis_clients
from shared.settings import Settings
from worker_service import progress

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# Under the probes' 3 s timeout in deploy/k8s, so a silent broker reads as down, not as a hang.
BROKER_CHECK_TIMEOUT_S = 2.0


def broker_check(settings: Settings) -> Callable[[], bool]:
    """A PING of the broker, False on any Redis or socket error or after the timeout."""
    client = redis_clients.sync_client(settings, broker=True, timeout_s=BROKER_CHECK_TIMEOUT_S)

    def check() -> bool:
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    return check


class ProbeApp:
    """/livez and /readyz; every other path goes to `fallback` (the metrics)."""

    def __init__(
        self,
        fallback: WSGIApplication,
        directory: Path,
        max_age_s: float,
        broker_up: Callable[[], bool],
    ) -> None:
        self.fallback = fallback
        self.directory = directory
        self.max_age_s = max_age_s
        self.broker_up = broker_up

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/livez":
            return self._answer(start_response, *self.livez())
        if path == "/readyz":
            return self._answer(start_response, *self.readyz())
        return self.fallback(environ, start_response)

    def _assess(self) -> progress.Assessment:
        found = progress.read_progress(self.directory)
        return progress.assess(found, time.monotonic(), self.max_age_s)

    def livez(self) -> tuple[bool, dict[str, Any]]:
        verdict = self._assess()
        body = {
            "status": "ok" if verdict.alive else "stalled",
            "problems": verdict.problems,
            "processes": verdict.processes,
        }
        return verdict.alive, body

    def readyz(self) -> tuple[bool, dict[str, Any]]:
        verdict = self._assess()
        broker_up = self.broker_up()
        ready = verdict.progressing and broker_up
        body = {
            "status": "ready" if ready else "not_ready",
            "broker": "ok" if broker_up else "down",
            "problems": verdict.problems,
            "processes": verdict.processes,
        }
        return ready, body

    @staticmethod
    def _answer(start_response: StartResponse, ok: bool, body: dict[str, Any]) -> list[bytes]:
        payload = json.dumps(body).encode()
        status = "200 OK" if ok else "503 Service Unavailable"
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        start_response(status, headers)
        return [payload]
