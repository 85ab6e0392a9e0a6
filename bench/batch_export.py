"""batch_export: a whole batch's results streamed by the real API process, NDJSON and CSV.

A finished batch of `RESULTS` tasks (each with a 1.3 KB report, `bench.finished_batch`) is
exported through `GET /api/v1/batches/{id}/results` by a client reading as fast as it can,
while the API process's resident memory is sampled every 10 ms. Baseline: the same NDJSON
lines read by `COPY … TO STDOUT` in this process (PostgreSQL alone, no HTTP). Figures:
results per second and the ratio to the baseline; the API's peak memory above what it held
before, for the small batch and the large one (flat: the large one needs no more than
`FLAT_MB` above the small one); and the NDJSON rate by `SCAN_EXPORT_CHUNK_ROWS`.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import asyncpg
import httpx
import psutil

from bench.common import (
    BenchContext,
    Process,
    ScenarioResult,
    Spread,
    start_process,
    verdict,
    wait_live,
)
from bench.finished_batch import seed_finished_batch
from scanctl.processes import api_command
from shared.db import users
from shared.embedded import free_port
from shared.tokens import hash_token, new_token

RESULTS = 100_000
SMALL = 10_000
CHUNKS = (100, 500, 2000)
FLAT_MB = 8.0
MB = 1024 * 1024
_COPY_SQL = """
    SELECT json_build_object('id', id, 'target_domain', target_domain, 'status', status,
                             'attempts', attempts, 'error', error, 'created_at', created_at,
                             'finished_at', finished_at, 'result', result)::text
    FROM tasks WHERE batch_id = '{batch_id}' ORDER BY batch_position
"""


class PeakRss:
    """A process's highest resident set size while the block runs, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.before = self.peak = self._process.memory_info().rss
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

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / MB


def _export(port: int, token: str, batch_id: uuid.UUID, export_format: str) -> tuple[int, float]:
    """(lines read, seconds) for one whole export."""
    started = time.monotonic()
    lines = 0
    with httpx.stream(
        "GET",
        f"http://127.0.0.1:{port}/api/v1/batches/{batch_id}/results",
        params={"format": export_format},
        headers={"Authorization": f"Bearer {token}"},
        timeout=300,
    ) as response:
        response.raise_for_status()
        # Bytes, not httpx's line splitting: the client must not be what is measured.
        for chunk in response.iter_raw(1 << 16):
            lines += chunk.count(b"\n")
    return lines, time.monotonic() - started


async def _copy_rate(ctx: BenchContext, batch_id: uuid.UUID, count: int) -> float:
    """Lines per second PostgreSQL alone sends for the same NDJSON."""
    connection = await asyncpg.connect(ctx.settings.asyncpg_dsn)
    written = 0

    async def sink(data: bytes) -> None:
        nonlocal written
        written += len(data)

    try:
        started = time.monotonic()
        await connection.copy_from_query(_COPY_SQL.format(batch_id=batch_id), output=sink)
        return count / (time.monotonic() - started)
    finally:
        await connection.close()


async def _seed(ctx: BenchContext) -> tuple[str, uuid.UUID, uuid.UUID]:
    await ctx.reset()
    token = new_token()
    async with ctx.sessionmaker() as session, session.begin():
        user = await users.insert_user(session, "bench-export", hash_token(token), False)
        small = await seed_finished_batch(session, user.id, SMALL)
        large = await seed_finished_batch(session, user.id, ctx.scaled(RESULTS, SMALL))
    await ctx.vacuum(tables="tasks")
    return token, small, large


def _start_api(ctx: BenchContext, chunk_rows: int) -> tuple[Process, int, int]:
    port = free_port()
    env = ctx.env(SCAN_EXPORT_CHUNK_ROWS=str(chunk_rows))
    process = start_process(ctx, f"api-export-{chunk_rows}", api_command("127.0.0.1", port), env)
    wait_live(process, port)
    return process, port, process.popen.pid


async def run(ctx: BenchContext) -> ScenarioResult:
    token, small, large = await _seed(ctx)
    count = ctx.scaled(RESULTS, SMALL)
    result = ScenarioResult(
        title=f"Batch export: {count:,} results streamed by the API",
        columns=["export", "results/s", "vs COPY", "peak +MB", "verdict"],
        params={"results": count, "small": SMALL, "chunks": list(CHUNKS)},
    )
    copy_rate = Spread.of([await _copy_rate(ctx, large, count) for _ in range(ctx.reps)])
    result.rows.append({"export": "baseline: COPY (PostgreSQL alone)", "results/s": copy_rate})
    default_chunk = int(ctx.settings.export_chunk_rows)
    process, port, pid = _start_api(ctx, default_chunk)
    try:
        await asyncio.to_thread(_export, port, token, small, "ndjson")  # warm up
        for export_format in ("ndjson", "csv"):
            growth: dict[int, float] = {}
            rates: list[float] = []
            for batch_id, size in ((small, SMALL), (large, count)):
                for _ in range(ctx.reps if size == count else 1):
                    with PeakRss(pid) as rss:
                        lines, seconds = await asyncio.to_thread(
                            _export, port, token, batch_id, export_format
                        )
                    if lines != size + (export_format == "csv"):
                        raise RuntimeError(f"the export had {lines} lines for {size} tasks")
                    growth[size] = max(growth.get(size, 0.0), rss.growth_mb)
                    if size == count:
                        rates.append(size / seconds)
            rate = Spread.of(rates)
            flat = growth[count] - growth[SMALL]
            result.rows.append(
                {
                    "export": f"{export_format}, {count:,} (small batch {SMALL:,}: "
                    f"+{growth[SMALL]:.1f} MB)",
                    "results/s": rate,
                    "vs COPY": round(rate.median / copy_rate.median, 2),
                    "peak +MB": round(growth[count], 1),
                    "verdict": verdict(flat, "≤", FLAT_MB),
                }
            )
    finally:
        process.stop()
    for chunk in CHUNKS:
        process, port, _ = _start_api(ctx, chunk)
        try:
            await asyncio.to_thread(_export, port, token, small, "ndjson")
            timings = [
                (await asyncio.to_thread(_export, port, token, large, "ndjson"))[1]
                for _ in range(ctx.reps)
            ]
        finally:
            process.stop()
        result.rows.append(
            {
                "export": f"ndjson, SCAN_EXPORT_CHUNK_ROWS={chunk}",
                "results/s": Spread.of([count / s for s in timings]),
            }
        )
    result.notes.append(
        f"verdict: the large batch's peak memory above the small one's (≤ {FLAT_MB:g} MB is "
        "flat: the API holds one chunk at a time, whatever the batch's size)"
    )
    return result
