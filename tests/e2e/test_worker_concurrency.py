"""End to end: a worker process with hundreds of scans in flight, politeness at that
concurrency, and stops (graceful, and during start-up) that finish or hand back every scan."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from scanctl.processes import relay_command, worker_command
from shared.db import tasks, users
from shared.db.engine import create_engine, create_sessionmaker
from shared.embedded import EmbeddedUrls
from shared.messages import scan_entry
from shared.settings import Settings
from tests.e2e.stack import Stack, new_stack
from tests.helpers import wait_until
from tests.sites import SlowSite, slow_site

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]
DEADLINE_S = 60.0
IN_FLIGHT = 120
READY = "ready for action"
_STATUS_SQL = text("SELECT status, count(*) FROM tasks GROUP BY status")


@pytest.fixture
def site() -> Iterator[SlowSite]:
    with slow_site(delay_s=1.0) as site:
        yield site


@pytest.fixture
def stack(servers: EmbeddedUrls, site: SlowSite, tmp_path: Path) -> Iterator[Stack]:
    """A relay and a worker (started by each test) on a clean database; stopped at the end."""
    stack = new_stack(servers.database_url, servers.redis_url, site.port, tmp_path)
    stack.env.update(SCAN_WORKER_METRICS_PORT="0", SCAN_POLITENESS_DELAY_S="0.2")
    try:
        yield stack
    finally:
        for service in stack.services.values():
            if service.process.poll() is None:
                service.stop()


def add_tasks(settings: Settings, domains: list[str]) -> None:
    """Committed tasks with their outbox rows, one per domain, as the API writes them."""

    async def insert() -> None:
        engine = create_engine(settings)
        try:
            sessionmaker = create_sessionmaker(engine)
            async with sessionmaker() as session, session.begin():
                user = await users.insert_user(session, "e2e", "hash", False)
                for domain in domains:
                    task_id = uuid.uuid4()
                    new = tasks.NewTask(
                        user_id=user.id, target_domain=domain, config={}, max_attempts=3
                    )
                    entry = scan_entry(task_id, settings.queue_name)
                    await tasks.insert_task_with_message(session, task_id, new, entry)
        finally:
            await engine.dispose()

    asyncio.run(insert())


def statuses(settings: Settings) -> dict[str, int]:
    async def read() -> dict[str, int]:
        engine = create_engine(settings)
        try:
            async with engine.connect() as connection:
                rows = (await connection.execute(_STATUS_SQL)).all()
        finally:
            await engine.dispose()
        return dict(rows)

    return asyncio.run(read())


def test_a_graceful_stop_finishes_every_scan_in_flight(
    stack: Stack, site: SlowSite, settings: Settings
) -> None:
    add_tasks(settings, [f"s{index}.example.com" for index in range(IN_FLIGHT)])
    worker = stack.start("worker", worker_command(processes=1))
    stack.start("relay", relay_command())
    wait_until(lambda: site.total_in_flight == IN_FLIGHT, DEADLINE_S, "every scan in flight")

    assert worker.stop() == 0
    assert statuses(settings) == {"succeeded": IN_FLIGHT}


def test_a_stop_hands_back_the_scans_it_cannot_finish(
    stack: Stack, site: SlowSite, settings: Settings, redis_client: redis.Redis
) -> None:
    hanging = [f"hang{index}.example.com" for index in range(IN_FLIGHT)]
    add_tasks(settings, hanging)
    stack.env.update(SCAN_FETCH_TIMEOUT_S="300", SCAN_TOTAL_TIMEOUT_S="300")
    worker = stack.start("worker", worker_command(processes=1, shutdown_timeout_ms=4000))
    stack.start("relay", relay_command())
    wait_until(lambda: site.total_in_flight == IN_FLIGHT, DEADLINE_S, "every scan in flight")

    assert worker.stop() == 0
    # Each message is back in the queue for another worker; none is left fetched and unacked.
    assert redis_client.llen(f"dramatiq:{settings.queue_name}") == IN_FLIGHT
    assert not list(redis_client.scan_iter("dramatiq:__acks__.*"))
    assert "Handing back 120 messages still running" in worker.log()


def test_politeness_holds_with_hundreds_of_slots(
    stack: Stack, site: SlowSite, settings: Settings
) -> None:
    add_tasks(settings, ["polite.example.com"] * 30 + [f"s{i}.example.com" for i in range(60)])
    stack.start("worker", worker_command(processes=1))
    stack.start("relay", relay_command())
    wait_until(
        lambda: statuses(settings) == {"succeeded": 90}, DEADLINE_S * 2, "every task to succeed"
    )
    assert max(site.most_in_flight.values()) <= settings.per_target_concurrency


@pytest.mark.parametrize("moment", ["at launch", "while booting", "once ready"])
def test_sigterm_during_start_up_stops_the_worker_cleanly(
    stack: Stack, settings: Settings, redis_client: redis.Redis, moment: str
) -> None:
    add_tasks(settings, [f"s{index}.example.com" for index in range(20)])
    stack.start("relay", relay_command())
    worker = stack.start("worker", worker_command(processes=2, concurrency=500))
    if moment == "while booting":
        wait_until(lambda: "Event loop is running" in worker.log(), DEADLINE_S, "a booting loop")
    elif moment == "once ready":
        wait_until(lambda: READY in worker.log(), DEADLINE_S, "the worker to be ready")
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(timeout=DEADLINE_S)

    # Python's default for SIGTERM, before any handler is set, ends the process with it.
    assert code == 0 or (moment == "at launch" and code == -signal.SIGTERM), worker.log()[-3000:]
    assert not list(redis_client.scan_iter("dramatiq:__acks__.*"))
