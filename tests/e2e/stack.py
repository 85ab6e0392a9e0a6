"""The three real processes (uvicorn, relay, Dramatiq worker) as subprocesses of a test."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from scanctl.processes import api_command, relay_command, worker_command
from shared.embedded import free_port
from tests.helpers import wait_until

START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 30.0


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal_group(self, signum: int) -> None:
        """`signum` to the service and every process it started (they share its session)."""
        os.killpg(self.process.pid, signum)

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.name} ignored SIGTERM:\n{self.log()[-3000:]}") from None


@dataclass
class Stack:
    env: dict[str, str]
    api_port: int
    log_dir: Path
    services: dict[str, Service] = field(default_factory=dict)

    def start(self, name: str, command: list[str]) -> Service:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, process, log_path)
        self.services[name] = service
        return service

    def start_all(self) -> None:
        self.start("api", api_command("127.0.0.1", self.api_port))
        self.start("relay", relay_command())
        self.start("worker", worker_command(processes=1))
        wait_until(self._api_ready, START_DEADLINE_S, "the API to be ready")

    def _api_ready(self) -> bool:
        for service in self.services.values():
            if service.process.poll() is not None:
                raise AssertionError(f"{service.name} exited early:\n{service.log()[-3000:]}")
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop_all(self) -> dict[str, int]:
        return {name: service.stop() for name, service in self.services.items()}

    def assert_stopped_cleanly(self, codes: dict[str, int]) -> None:
        """Every service ended on its own after SIGTERM.

        Uvicorn re-raises the signal once its graceful shutdown is complete, so
        its clean exit is -SIGTERM after "Finished server process".
        """
        for name, code in codes.items():
            log = self.services[name].log()
            clean = code == 0 or (
                name == "api" and code == -signal.SIGTERM and "Finished server process" in log
            )
            assert clean, f"{name} exited with {code}:\n{log[-3000:]}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


def stack_env(database_url: str, redis_url: str, site_port: int, api_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SCAN_API_HOST="127.0.0.1",
        SCAN_API_PORT=str(api_port),
        SCAN_LOG_JSON="true",
        SCAN_RESOLVER_OVERRIDES="example.com=127.0.0.1",
        SCAN_ALLOW_PRIVATE="true",
        SCAN_SCHEMES="http",
        SCAN_HTTP_PORT=str(site_port),
        SCAN_RELAY_POLL_INTERVAL_S="0.5",
        SCAN_WORKER_METRICS_PORT=str(free_port()),
        SCAN_RELAY_HEALTH_PORT=str(free_port()),
        # High enough that no test's creates are ever refused, low enough to stay in force.
        SCAN_RATE_LIMIT_PER_MINUTE="1000000",
        SCAN_RATE_LIMIT_BURST="100000",
    )
    return env


def new_stack(database_url: str, redis_url: str, site_port: int, log_dir: Path) -> Stack:
    api_port = free_port()
    return Stack(
        env=stack_env(database_url, redis_url, site_port, api_port),
        api_port=api_port,
        log_dir=log_dir,
    )
