"""End to end: a worker paused past its lease (SIGSTOP) wakes up (SIGCONT) after another worker
took the task over and finished it, and can overwrite nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from shared import keys
from shared.broker import build_message, create_broker
from shared.cli.processes import api_command, relay_command, worker_command
from shared.db.engine import create_engine, create_sessionmaker
from shared.db.models import Task
from shared.embedded import EmbeddedUrls
from shared.settings import Settings
from tests.e2e.stack import Service, Stack, new_stack
from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]
DOMAIN = "fence.example.com"
LEASE_S = 1.5


@dataclass
class SlowSite:
    """The first request waits for `release`; every answer's title says which hit it was."""

    port: int = 0
    hits: int = 0
    release: threading.Event = field(default_factory=threading.Event)


@contextmanager
def slow_site() -> Iterator[SlowSite]:
    site = SlowSite()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                site.hits += 1
                hit = site.hits
            if hit == 1:
                site.release.wait(60)
            body = f"<title>hit {hit}</title>".encode()
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the paused worker may have given up on this request

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    site.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield site
    finally:
        site.release.set()
        server.shutdown()
        server.server_close()


def query(settings: Settings, task_id: str, *columns: Any) -> Any:
    async def run() -> Any:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                stmt = select(*columns).where(Task.id == uuid.UUID(task_id))
                return (await session.execute(stmt)).one()
        finally:
            await engine.dispose()

    return asyncio.run(run())


def start_worker(stack: Stack, name: str) -> None:
    # Each worker process would otherwise try to serve metrics on the same port.
    stack.env["SCAN_WORKER_METRICS_PORT"] = "0"
    stack.start(name, worker_command(processes=1, threads=2))


def logged(service: Service, event: str, task_id: str) -> bool:
    """Whether the service wrote the JSON log line `event` for the task."""
    for line in service.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (record.get("event"), record.get("task_id")) == (
            event,
            task_id,
        ):
            return True
    return False


@pytest.fixture
def site() -> Iterator[SlowSite]:
    with slow_site() as site:
        yield site


@pytest.fixture
def paused() -> list[int]:
    """Processes a test stopped; the stack resumes them before shutting down."""
    return []


@pytest.fixture
def stack(
    servers: EmbeddedUrls, site: SlowSite, tmp_path: Path, paused: list[int]
) -> Iterator[Stack]:
    stack = new_stack(servers.database_url, servers.redis_url, site.port, tmp_path)
    stack.env.update(
        SCAN_WORKER_LEASE_S=str(LEASE_S),
        SCAN_FETCH_TIMEOUT_S="60",
        SCAN_TOTAL_TIMEOUT_S="90",
        SCAN_RESOLVER_OVERRIDES=f"{DOMAIN}=127.0.0.1",
    )
    stack.start("api", api_command("127.0.0.1", stack.api_port))
    stack.start("relay", relay_command())
    start_worker(stack, "worker-a")
    try:
        wait_until(stack._api_ready, 30, "the API to be ready")
        yield stack
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        stack.assert_stopped_cleanly(stack.stop_all())


def token(stack: Stack) -> str:
    created = subprocess.run(
        [sys.executable, "-m", "shared.cli.main", "users", "create", "fencing"],
        env=stack.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return created.stdout.strip()


def redeliver(settings: Settings, task_id: str) -> None:
    """Send the task's message again, as a re-dispatch or a broker redelivery would."""
    broker = create_broker(settings, middleware=[])
    try:
        payload = {"task_id": task_id}
        broker.enqueue(build_message(uuid.uuid4(), settings.queue_name, keys.SCAN_ACTOR, payload))
    finally:
        broker.close()


def test_a_worker_paused_past_its_lease_cannot_overwrite_its_successor(
    stack: Stack, site: SlowSite, settings: Settings, paused: list[int]
) -> None:
    headers = {"Authorization": f"Bearer {token(stack)}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as http:
        created = http.post("/api/v1/tasks", json={"target_domain": DOMAIN})
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        # Worker A is in the middle of the scan: its request waits on the slow site.
        wait_until(lambda: site.hits == 1, 30, "worker A's request to the site")
        (owner,) = query(settings, task_id, Task.lease_owner)
        pid = int(owner.rpartition(":")[2])
        os.kill(pid, signal.SIGSTOP)
        paused.append(pid)

        expired = Task.lease_expires_at < func.now()
        wait_until(lambda: query(settings, task_id, expired)[0], 30, "worker A's lease to expire")
        start_worker(stack, "worker-b")
        redeliver(settings, task_id)

        def finished() -> dict[str, Any] | None:
            task: dict[str, Any] = http.get(f"/api/v1/tasks/{task_id}").json()
            return task if task["status"] == "succeeded" else None

        done = wait_until(finished, 60, "worker B to finish the task", every_s=0.1)
        assert done["result"]["http"]["title"] == "hit 2"

        # Worker A wakes up with its scan in flight and its lease renewal overdue.
        site.release.set()
        os.kill(pid, signal.SIGCONT)
        paused.remove(pid)
        worker_a = stack.services["worker-a"]
        wait_until(lambda: logged(worker_a, "task_lease_lost", task_id), 30, "A to notice")

        after = http.get(f"/api/v1/tasks/{task_id}").json()
    assert after == done
    assert site.hits == 2
    assert logged(stack.services["api"], "task created and marked", task_id)
    assert logged(stack.services["worker-b"], "task verified", task_id)
