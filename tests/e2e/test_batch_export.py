"""A whole batch's export from the real API process: its memory stays flat however many
results it streams, and a client reading slowly holds nothing open but its response."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import text

from bench.finished_batch import seed_finished_batch
from scanctl.processes import api_command
from shared.db.engine import create_engine, create_sessionmaker
from shared.embedded import EmbeddedUrls
from shared.settings import Settings
from tests.e2e.stack import Stack, new_stack
from tests.helpers import scanctl, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]

MB = 1024 * 1024


@pytest.fixture
def api(servers: EmbeddedUrls, tmp_path: Path) -> Iterator[Stack]:
    """The API process alone: an export needs no relay or worker."""
    stack = new_stack(servers.database_url, servers.redis_url, 1, tmp_path)
    stack.start("api", api_command("127.0.0.1", stack.api_port))
    wait_until(stack._api_ready, 30, "the API to be ready")
    try:
        yield stack
    finally:
        stack.assert_stopped_cleanly(stack.stop_all())


def seed(settings: Settings, user_name: str, count: int) -> uuid.UUID:
    async def write() -> uuid.UUID:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session, session.begin():
                user_id = (
                    await session.execute(
                        text("SELECT id FROM users WHERE name = :n"), {"n": user_name}
                    )
                ).scalar_one()
                return await seed_finished_batch(session, user_id, count)
        finally:
            await engine.dispose()

    return asyncio.run(write())


class PeakRss:
    """The highest resident set size of a process while the block runs, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def export(stack: Stack, token: str, batch_id: uuid.UUID, export_format: str) -> int:
    """Read the whole export as a client would; returns its lines."""
    lines = 0
    url = f"{stack.api_url}/api/v1/batches/{batch_id}/results"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream(
        "GET", url, params={"format": export_format}, headers=headers, timeout=120
    ) as response:
        assert response.status_code == 200
        for _ in response.iter_lines():
            lines += 1
    return lines


def test_exporting_25000_results_takes_no_more_memory_than_5000(
    api: Stack, settings: Settings
) -> None:
    created = scanctl("users", "create", "exporter", env=api.env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    small, large = seed(settings, "exporter", 5_000), seed(settings, "exporter", 25_000)
    pid = api.services["api"].process.pid
    # Warm up: imports, the pool's connections, the allocator's arenas.
    assert export(api, token, small, "ndjson") == 5_000

    growth: dict[tuple[int, str], float] = {}
    for count, batch_id in ((5_000, small), (25_000, large)):
        for export_format in ("ndjson", "csv"):
            before = psutil.Process(pid).memory_info().rss
            started = time.monotonic()
            with PeakRss(pid) as rss:
                lines = export(api, token, batch_id, export_format)
            assert lines == count + (1 if export_format == "csv" else 0)
            growth[(count, export_format)] = (rss.peak - before) / MB
            print(  # the figure, for the record (-s)
                f"{count} {export_format}: {count / (time.monotonic() - started):.0f} results/s, "
                f"peak +{growth[(count, export_format)]:.1f} MB"
            )

    for export_format in ("ndjson", "csv"):
        # Five times the results, the same few chunks in memory at a time.
        assert growth[(25_000, export_format)] < growth[(5_000, export_format)] + 8, growth
        assert growth[(25_000, export_format)] < 32, growth
