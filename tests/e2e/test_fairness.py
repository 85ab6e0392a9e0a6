"""End to end: one client's large backlog does not hold back another client's scans."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from shared.db.engine import create_engine
from shared.embedded import EmbeddedUrls
from shared.settings import Settings
from tests.e2e.stack import Stack, new_stack
from tests.helpers import scanctl
from tests.sites import SlowSite, slow_site

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]
BACKLOG = 3000
SINGLES = 3

# How many of the bulk client's tasks had not ended when each single scan ended.
_BULK_LEFT_SQL = text(
    """
    SELECT single.id, (SELECT count(*) FROM tasks bulk
                       WHERE bulk.batch_id IS NOT NULL
                         AND (bulk.finished_at IS NULL OR bulk.finished_at > single.finished_at))
    FROM tasks single WHERE single.batch_id IS NULL
    """
)


@pytest.fixture
def site() -> Iterator[SlowSite]:
    with slow_site(delay_s=1.0) as site:
        yield site


@pytest.fixture
def stack(servers: EmbeddedUrls, site: SlowSite, tmp_path: Path) -> Iterator[Stack]:
    stack = new_stack(servers.database_url, servers.redis_url, site.port, tmp_path)
    stack.start_all()
    try:
        yield stack
    finally:
        stack.assert_stopped_cleanly(stack.stop_all())


def token(stack: Stack, name: str) -> str:
    created = scanctl("users", "create", name, env=stack.env)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def bulk_left_at_each_single_end(settings: Settings) -> list[int]:
    async def read() -> list[int]:
        engine = create_engine(settings)
        try:
            async with engine.connect() as connection:
                return [row[1] for row in (await connection.execute(_BULK_LEFT_SQL)).all()]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_a_clients_scans_run_beside_another_clients_large_backlog(
    stack: Stack, settings: Settings
) -> None:
    bulk = {"Authorization": f"Bearer {token(stack, 'bulk')}"}
    other = {"Authorization": f"Bearer {token(stack, 'other')}"}
    with httpx.Client(base_url=stack.api_url, timeout=60) as http:
        for start in range(0, BACKLOG, 500):
            domains = [f"b{n}.example.com" for n in range(start, start + 500)]
            body = {"tasks": [{"target_domain": domain} for domain in domains]}
            assert http.post("/api/v1/batches", json=body, headers=bulk).status_code == 201
        ended = []
        for n in range(SINGLES):
            body = {"target_domain": f"single{n}.example.com"}
            created = http.post("/api/v1/tasks", json=body, headers=other).json()
            waited = http.get(
                f"/api/v1/tasks/{created['id']}", params={"wait": 30}, headers=other
            ).json()
            ended.append(waited["status"])

    assert ended == ["succeeded"] * SINGLES
    # In one broker queue the singles would end after the whole backlog ahead of them; with
    # a window per client they end while most of it still waits.
    assert all(left > BACKLOG // 3 for left in bulk_left_at_each_single_end(settings))
