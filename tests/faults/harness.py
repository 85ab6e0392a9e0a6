"""The whole stack as separate processes on the fault suite's own servers: the API, two relays
and two workers, with the means to kill, freeze and resume any of them."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from scanctl.processes import api_command, worker_command
from shared.embedded import free_port
from tests.e2e.relays import RELAY_ENV, Fleet, Relay
from tests.e2e.stack import Service, stack_env
from tests.faults.servers import FaultServers
from tests.faults.site import CountingSite
from tests.helpers import wait_until

START_DEADLINE_S = 60.0
# Short timers, so a dead or frozen worker's task goes round again within a test's deadline.
# Each run after a lease expiry counts an attempt (its claim does), hence the extra attempts.
FAULT_ENV = {
    "SCAN_WORKER_LEASE_S": "2",
    "SCAN_TASK_MAX_ATTEMPTS": "5",
    "SCAN_RELAY_LISTEN_RECONNECT_MAX_S": "1",
    "SCAN_WORKER_METRICS_PORT": "0",
    "SCAN_DB_POOL_SIZE": "8",
    "SCAN_DB_MAX_OVERFLOW": "4",
    "SCAN_WORKER_PREFETCH": "12",  # WORKER_PREFETCH
}
# The product's lease, for runs whose point is not a lease expiry: under load on a shared
# machine a 2 s lease can lapse while a finished scan's end waits for its batch write.
HEALTHY_LEASE = {"SCAN_WORKER_LEASE_S": "30"}
WORKER_READY = "ready for action"
# Against the slow site of the fault scenarios scans mostly wait: concurrency sets the pace
# there; kept to the database pool above (8 + 4) so faults, not pool waits, shape the runs.
WORKER_CONCURRENCY = 12
# As many fetched and waiting as running: most of a scenario's messages stay in the broker,
# where its faults (a flush, an empty restart, a killed consumer) can reach them.
WORKER_PREFETCH = WORKER_CONCURRENCY


@dataclass
class FaultStack:
    fleet: Fleet
    api: Service
    api_url: str
    relays: dict[str, Relay]
    workers: dict[str, Service]
    frozen: set[str] = field(default_factory=set)
    killed: list[Service] = field(default_factory=list)

    def kill(self, service: Service) -> None:
        """SIGKILL to the service and its children: no shutdown code runs, as when a node dies."""
        service.signal_group(signal.SIGKILL)
        service.process.wait()
        self.fleet.services.remove(service)
        self.killed.append(service)

    def freeze(self, service: Service) -> None:
        service.signal_group(signal.SIGSTOP)
        self.frozen.add(service.name)

    def thaw(self, service: Service) -> None:
        service.signal_group(signal.SIGCONT)
        self.frozen.discard(service.name)

    def add_worker(self, name: str) -> Service:
        worker = _start_worker(self.fleet, name)
        self.workers[name] = worker
        wait_until(lambda: WORKER_READY in worker.log(), START_DEADLINE_S, f"{name} to be ready")
        return worker

    def pids(self, service: Service) -> set[int]:
        """The service's process and all its descendants."""
        root = psutil.Process(service.process.pid)
        return {root.pid, *(child.pid for child in root.children(recursive=True))}

    def processes_by_name(self) -> list[tuple[str, Service]]:
        """Every live service by name."""
        return [(service.name, service) for service in self.fleet.services]

    def all_logs(self, prefix: str) -> list[str]:
        """Logs of every service named `prefix…`, killed ones included."""
        services = [*self.fleet.services, *self.killed]
        return [service.log() for service in services if service.name.startswith(prefix)]

    def api_ready(self) -> bool:
        if self.api.process.poll() is not None:
            raise AssertionError(f"the API exited:\n{self.api.log()[-3000:]}")
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def _start_worker(fleet: Fleet, name: str) -> Service:
    return fleet.start(name, worker_command(processes=1, concurrency=WORKER_CONCURRENCY))


def _stopped_cleanly(name: str, code: int, log: str) -> bool:
    # Uvicorn re-raises SIGTERM once its graceful shutdown is complete.
    return code == 0 or (name == "api" and code == -signal.SIGTERM and "Finished server" in log)


@contextmanager
def fault_stack(
    servers: FaultServers, site: CountingSite, log_dir: Path, **env: str
) -> Iterator[FaultStack]:
    """The API, relays `relay-a`/`relay-b` and workers `worker-a`/`worker-b`, started and ready;
    at the end every frozen one is resumed and all get SIGTERM and must exit cleanly."""
    api_port = free_port()
    base = stack_env(servers.postgres.url, servers.redis.url, site.port, api_port)
    fleet = Fleet({**base, **RELAY_ENV, **FAULT_ENV, **env}, log_dir)
    api = fleet.start("api", api_command("127.0.0.1", api_port))
    stack = FaultStack(fleet, api, f"http://127.0.0.1:{api_port}", {}, {})
    try:
        workers = {name: _start_worker(fleet, name) for name in ("worker-a", "worker-b")}
        stack.relays = {name: fleet.relay(name) for name in ("relay-a", "relay-b")}
        stack.workers = workers
        wait_until(stack.api_ready, START_DEADLINE_S, "the API to be ready")
        for name, worker in workers.items():
            wait_until(lambda w=worker: WORKER_READY in w.log(), START_DEADLINE_S, f"{name} ready")
        yield stack
    finally:
        for service in fleet.services:
            if service.name in stack.frozen:
                service.signal_group(signal.SIGCONT)
        servers.ensure_running()
        codes = {service.name: (service.stop(), service.log()) for service in fleet.services}
        unclean = {
            name: code
            for name, (code, log) in codes.items()
            if not _stopped_cleanly(name, code, log)
        }
        assert not unclean, f"services did not stop cleanly: {unclean}"
