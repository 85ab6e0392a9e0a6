"""End to end: HTTP create → outbox → relay → Dramatiq → worker → result, with real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import keys
from shared.broker import build_message, create_broker
from shared.db.models import OutboxMessage
from shared.embedded import EmbeddedUrls
from shared.settings import Settings
from tests.e2e.stack import Stack, new_stack
from tests.helpers import make_user, wait_until
from tests.sites import Site, local_site

pytestmark = pytest.mark.e2e
SCANS = 50


@pytest.fixture
def site() -> Iterator[Site]:
    with local_site() as site:
        yield site


@pytest.fixture
def stack(
    servers: EmbeddedUrls,
    site: Site,
    tmp_path: Path,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> Iterator[Stack]:
    stack = new_stack(servers.database_url, servers.redis_url, site.port, tmp_path)
    stack.start_all()
    try:
        yield stack
    finally:
        stack.assert_stopped_cleanly(stack.stop_all())


def all_finished(http: httpx.Client, ids: list[str]) -> list[dict[str, object]] | None:
    tasks = [http.get(f"/api/v1/tasks/{task_id}").json() for task_id in ids]
    if all(task["status"] in ("succeeded", "failed", "cancelled") for task in tasks):
        return tasks
    return None


async def test_fifty_scans_over_http_all_succeed_with_results(
    stack: Stack, site: Site, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await make_user(sessionmaker)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as http:
        ids = []
        for index in range(SCANS):
            response = http.post("/api/v1/tasks", json={"target_domain": f"site{index}.example.com"})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        tasks = wait_until(lambda: all_finished(http, ids), 60, "all scans to finish", every_s=0.2)

    assert [task["status"] for task in tasks] == ["succeeded"] * SCANS
    for index, task in enumerate(tasks):
        result = task["result"]
        assert isinstance(result, dict)
        assert result["http"]["status"] == 200
        assert result["http"]["title"] == f"site{index}.example.com"
        assert result["dns"]["a"] == ["127.0.0.1"]
        assert task["attempts"] == 1
    assert site.total_hits == SCANS
    # One grep follows a scan: the worker logs carry the task id.
    worker_log = stack.services["worker"].log()
    assert all(task_id in worker_log for task_id in ids)


async def test_duplicate_deliveries_of_finished_tasks_scan_nothing_again(
    stack: Stack,
    site: Site,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    _, token = await make_user(sessionmaker)
    with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {token}"}) as http:
        ids = [
            http.post("/api/v1/tasks", json={"target_domain": f"dup{i}.example.com"}).json()["id"]
            for i in range(5)
        ]
        wait_until(lambda: all_finished(http, ids), 30, "the first deliveries")
    assert site.total_hits == 5

    async with sessionmaker() as session:
        rows = (await session.execute(select(OutboxMessage))).scalars().all()
    broker = create_broker(settings, middleware=[])
    for row in rows:
        broker.enqueue(build_message(row.message_id, row.queue, row.actor, row.payload))
    broker.close()
    msgs_key = f"{keys.broker_queue_key(settings.queue_name)}.msgs"
    wait_until(lambda: redis_client.hlen(msgs_key) == 0, 30, "the duplicates to be acknowledged")

    assert site.total_hits == 5
    with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {token}"}) as http:
        for task_id in ids:
            assert http.get(f"/api/v1/tasks/{task_id}").json()["attempts"] == 1
