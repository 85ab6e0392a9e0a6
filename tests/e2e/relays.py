"""Relay and worker processes for the relay's end-to-end tests, each relay with its own probes."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from scanctl.processes import relay_command, worker_command
from shared.db.engine import create_engine, create_sessionmaker
from shared.embedded import free_port
from shared.settings import Settings
from tests.e2e.stack import Service, stack_env
from tests.helpers import wait_until

T = TypeVar("T")
START_DEADLINE_S = 30.0

# Quick timers, so failover, backoff and polling show within a test's deadlines.
RELAY_ENV = {
    "SCAN_RELAY_POLL_INTERVAL_S": "0.2",
    "SCAN_RELAY_LEADER_CHECK_INTERVAL_S": "0.2",
    "SCAN_RELAY_REDISPATCH_INTERVAL_S": "0.3",
    "SCAN_RELAY_GAUGES_INTERVAL_S": "0.2",
    "SCAN_RELAY_BACKOFF_BASE_S": "0.2",
    "SCAN_RELAY_BACKOFF_MAX_S": "1",
    "SCAN_RELAY_BATCH_SIZE": "100",
    # No worker takes messages here, so one client's window holds its whole backlog
    # (windows have tests of their own: test_relay_fairness.py, test_fairness.py).
    "SCAN_RELAY_CLIENT_WINDOW": "100000",
}


@dataclass
class Relay:
    service: Service
    health_port: int

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.health_port}{path}", timeout=5)

    def live(self) -> bool:
        if self.service.process.poll() is not None:
            raise AssertionError(f"{self.service.name} exited:\n{self.service.log()[-3000:]}")
        try:
            return self.get("/livez").status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str) -> float:
        """A sample of the relay's /metrics (labels ignored, summed)."""
        total = 0.0
        for family in text_string_to_metric_families(self.get("/metrics").text):
            total += sum(s.value for s in family.samples if s.name == name)
        return total

    def is_leader(self) -> bool:
        return self.metric("scan_outbox_relay_leader") == 1


@dataclass
class Fleet:
    """Relays and workers started by one test, all stopped by SIGTERM at its end."""

    env: dict[str, str]
    log_dir: Path
    services: list[Service] = field(default_factory=list)

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> Service:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                env={**self.env, **env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, process, log_path)
        self.services.append(service)
        return service

    def start(self, name: str, command: list[str], **env: str) -> Service:
        """Any other process of the stack (the API, say), stopped with the rest."""
        return self._start(name, command, env)

    def relay(self, name: str, **env: str) -> Relay:
        port = free_port()
        service = self._start(name, relay_command(), {"SCAN_RELAY_HEALTH_PORT": str(port), **env})
        relay = Relay(service, port)
        wait_until(relay.live, START_DEADLINE_S, f"{name} to be live")
        return relay

    def worker(self, name: str = "worker", **env: str) -> Service:
        return self._start(name, worker_command(processes=1), env)

    def kill(self, service: Service) -> None:
        """SIGKILL: no shutdown code runs, as when a node dies."""
        service.process.kill()
        service.process.wait()
        self.services.remove(service)

    def stop_all(self) -> dict[str, int]:
        """SIGTERM every service not killed; their exit codes."""
        return {service.name: service.stop() for service in self.services}


@contextmanager
def fleet(database_url: str, redis_url: str, site_port: int, log_dir: Path) -> Iterator[Fleet]:
    env = {**stack_env(database_url, redis_url, site_port, free_port()), **RELAY_ENV}
    running = Fleet(env, log_dir)
    try:
        yield running
    finally:
        codes = running.stop_all()
        bad = {name: code for name, code in codes.items() if code != 0}
        assert not bad, f"services did not stop cleanly: {bad}"


class Db:
    """The database from a synchronous test: one engine on one private event loop."""

    def __init__(self, settings: Settings) -> None:
        self.runner = asyncio.Runner()
        # The observer, not the system under test: it must read on across database restarts
        # without retry logic of its own, so it tests each pooled connection before use.
        self.engine = create_engine(settings.model_copy(update={"db_pool_pre_ping": True}))
        self.sessionmaker = create_sessionmaker(self.engine)

    def __call__(self, query: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
        async def run() -> T:
            return await query(self.sessionmaker)

        return self.runner.run(run())

    def close(self) -> None:
        self.runner.run(self.engine.dispose())
        self.runner.close()
