"""The worker's /livez and /readyz judge the worker processes, not the fork serving them: a
stopped process or a blocked event loop fails them, a broker outage fails readiness only."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scanctl.processes import relay_command, worker_command
from shared.db import tasks, users
from shared.db.engine import create_engine, create_sessionmaker
from shared.embedded import EmbeddedUrls, RedisProcess
from shared.messages import scan_entry
from shared.settings import Settings
from tests.e2e.stack import Stack, new_stack
from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]

# Short, so the tests see a stall quickly; above Dramatiq's 3 s consumer restart delay, the
# longest a healthy consumer stays out of its turn while the broker is down.
MAX_AGE_S = 5.0
DEADLINE_S = 30.0


class Broker:
    """A Redis of the test's own (broker and safeguards), which it may stop and start again."""

    def __init__(self, data_dir: Path) -> None:
        self.server = RedisProcess(data_dir)
        self.server.start()

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.server = RedisProcess(self.server.data_dir, port=self.server.port)
        self.server.start()

    def signal(self, signum: int) -> None:
        assert self.server.process is not None
        self.server.process.send_signal(signum)

    def lose(self, how: str) -> None:
        """Refusing connections (stopped), or accepting and never answering (frozen)."""
        if how == "stopped":
            self.stop()
        else:
            self.signal(signal.SIGSTOP)

    def recover(self, how: str) -> None:
        if how == "stopped":
            self.restart()
        else:
            self.signal(signal.SIGCONT)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "redis")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def stack(servers: EmbeddedUrls, broker: Broker, tmp_path: Path) -> Iterator[Stack]:
    stack = new_stack(servers.database_url, broker.url, site_port=9, log_dir=tmp_path)
    stack.env.update(
        SCAN_WORKER_PROGRESS_MAX_AGE_S=str(MAX_AGE_S),
        SCAN_SCANNER="tests.scanners:block_the_loop",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    try:
        yield stack
    finally:
        stack.assert_stopped_cleanly(stack.stop_all())


def probe(stack: Stack, path: str) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a worker probe; (0, {}) while nothing answers."""
    url = f"http://127.0.0.1:{stack.env['SCAN_WORKER_METRICS_PORT']}{path}"
    try:
        response = httpx.get(url, timeout=3)
    except httpx.HTTPError:
        return 0, {}
    return response.status_code, response.json()


def answers(stack: Stack, path: str, status: int) -> dict[str, Any] | None:
    code, body = probe(stack, path)
    return body if code == status else None


def start_worker(stack: Stack) -> int:
    """Start one worker process; its pid once both probes answer 200."""
    stack.start("worker", worker_command(processes=1))
    wait_until(lambda: answers(stack, "/readyz", 200), DEADLINE_S, "/readyz to answer 200")
    body = wait_until(lambda: answers(stack, "/livez", 200), DEADLINE_S, "/livez 200")
    (process,) = body["processes"]
    return int(process["pid"])


def add_blocking_task(settings: Settings, block_s: float) -> None:
    async def insert() -> None:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session, session.begin():
                user = await users.insert_user(session, "e2e", "hash", False)
                task_id = uuid.uuid4()
                new = tasks.NewTask(
                    user_id=user.id,
                    target_domain="example.com",
                    config={"block_s": block_s},
                    max_attempts=1,
                )
                entry = scan_entry(task_id, settings.queue_name)
                await tasks.insert_task_with_message(session, task_id, new, entry)
        finally:
            await engine.dispose()

    asyncio.run(insert())


def test_a_stopped_worker_process_fails_both_probes_until_it_continues(stack: Stack) -> None:
    pid = start_worker(stack)
    os.kill(pid, signal.SIGSTOP)
    try:
        body = wait_until(lambda: answers(stack, "/livez", 503), DEADLINE_S, "/livez 503")
        assert body["status"] == "stalled"
        assert f"pid {pid}: event loop silent" in body["problems"][0]
        assert probe(stack, "/readyz")[0] == 503
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: answers(stack, "/livez", 200), DEADLINE_S, "/livez 200 again")
    wait_until(lambda: answers(stack, "/readyz", 200), DEADLINE_S, "/readyz 200 again")


def test_a_scan_blocking_the_event_loop_fails_liveness_until_it_returns(
    stack: Stack, settings: Settings, broker: Broker
) -> None:
    pid = start_worker(stack)
    stack.start("relay", relay_command())
    add_blocking_task(settings.model_copy(update={"redis_url": broker.url}), 3 * MAX_AGE_S)
    body = wait_until(lambda: answers(stack, "/livez", 503), DEADLINE_S, "/livez 503")
    assert f"pid {pid}: event loop silent" in body["problems"][0]
    body = wait_until(lambda: answers(stack, "/livez", 200), DEADLINE_S, "/livez 200 again")
    assert [p["pid"] for p in body["processes"]] == [pid]


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_a_broker_outage_fails_readiness_but_never_liveness(
    stack: Stack, broker: Broker, outage: str
) -> None:
    start_worker(stack)
    broker.lose(outage)
    body = wait_until(lambda: answers(stack, "/readyz", 503), DEADLINE_S, "/readyz 503")
    assert body["broker"] == "down"
    # Past the threshold several times over: consumers retrying a refused connection, or
    # blocked in a call the broker never answers.
    end = time.monotonic() + 3 * MAX_AGE_S
    try:
        while time.monotonic() < end:
            code, body = probe(stack, "/livez")
            assert code == 200, body
            time.sleep(0.2)
    finally:
        broker.recover(outage)
    wait_until(lambda: answers(stack, "/readyz", 200), DEADLINE_S, "/readyz 200 again")
