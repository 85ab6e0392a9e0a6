"""End to end: HTTP create → outbox → relay → Dramatiq → worker → result, with real processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select

from shared import keys
from shared.db.engine import create_engine, create_sessionmaker
from shared.db.models import OutboxMessage
from shared.dramatiq_broker import build_message, create_broker
from shared.settings import Settings
from tests.e2e.stack import Stack
from tests.helpers import wait_until
from tests.sites import Site

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]
SCANS = 50
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    """An HTTP client holding the token `scanctl users create` printed."""
    created = subprocess.run(
        [sys.executable, "-m", "scanctl.main", "users", "create", "e2e"],
        env=stack.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as http:
        yield http


def submit(http: httpx.Client, domains: list[str]) -> list[str]:
    ids = []
    for domain in domains:
        response = http.post("/api/v1/tasks", json={"target_domain": domain})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def all_finished(http: httpx.Client, ids: list[str]) -> list[dict[str, Any]] | None:
    tasks = [http.get(f"/api/v1/tasks/{task_id}").json() for task_id in ids]
    return tasks if all(task["status"] in TERMINAL for task in tasks) else None


def test_fifty_scans_over_http_all_succeed_with_results(
    stack: Stack, site: Site, client: httpx.Client
) -> None:
    ids = submit(client, [f"site{index}.example.com" for index in range(SCANS)])
    tasks = wait_until(lambda: all_finished(client, ids), 60, "all scans to finish", every_s=0.2)

    assert [task["status"] for task in tasks] == ["succeeded"] * SCANS
    for index, task in enumerate(tasks):
        result = task["result"]
        assert result["http"]["status"] == 200
        assert result["http"]["title"] == f"site{index}.example.com"
        assert result["dns"]["a"] == ["127.0.0.1"]
        assert task["attempts"] == 1
    assert site.total_hits == SCANS
    # One grep follows a scan: the worker's log lines carry the task id.
    worker_log = stack.services["worker"].log()
    assert all(task_id in worker_log for task_id in ids)


def outbox_rows(settings: Settings) -> list[OutboxMessage]:
    async def load() -> list[OutboxMessage]:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                return list((await session.execute(select(OutboxMessage))).scalars().all())
        finally:
            await engine.dispose()

    return asyncio.run(load())


def test_duplicate_deliveries_of_finished_tasks_scan_nothing_again(
    stack: Stack, site: Site, client: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    ids = submit(client, [f"dup{index}.example.com" for index in range(5)])
    wait_until(lambda: all_finished(client, ids), 30, "the first deliveries")
    assert site.total_hits == 5

    broker = create_broker(settings, middleware=[])
    for row in outbox_rows(settings):
        broker.enqueue(build_message(row.message_id, row.queue, row.actor, row.payload))
    broker.close()
    msgs_key = f"{keys.broker_queue_key(settings.queue_name)}.msgs"
    wait_until(lambda: redis_client.hlen(msgs_key) == 0, 30, "the duplicates to be acknowledged")

    assert site.total_hits == 5
    assert [client.get(f"/api/v1/tasks/{task_id}").json()["attempts"] for task_id in ids] == [1] * 5
