"""batch_create: tasks per second through POST /api/v1/batches against single creates.

One real API process (`bench.direct_app`, the production routes, Redis safeguards on with
a rate limit far above the load) serves both, on the same servers, in alternating runs:

- single: `bench.loadgen`, 32 closed-loop clients each posting one `POST /api/v1/tasks`
  at a time (what create_throughput measures);
- batches: 4 closed-loop clients each posting one batch of 1,000 new domains at a time.

Both count tasks committed per second (a batch's tasks count when its 201 arrives).
Then the create transaction alone: `insert_batch` for 1,000 domains in its own
transaction (BEGIN, the one statement, COMMIT) from this process, timed `TX_SAMPLES` times:
its p50 and p99. No relay or worker runs; tables are emptied between runs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from bench.common import (
    BarChart,
    BenchContext,
    DistributionChart,
    ScenarioResult,
    Spread,
    ms,
    percentile,
    verdict,
)
from bench.create_throughput import REAL, Target, fresh_token, run_load, start_api
from shared.db import batches
from shared.messages import scan_entry

BATCH_SIZE = 1000
BATCH_CLIENTS = 4
SINGLE_CLIENTS = 32
DURATION_S = 10.0
TX_SAMPLES = 50
TARGET_RATIO = 10.0
SINGLE, BATCHES = "single creates", f"batches of {BATCH_SIZE:,}"


async def _batch_client(
    http: httpx.AsyncClient, number: int, stop_at: float, latencies_s: list[float]
) -> int:
    """Batches posted one at a time until `stop_at`; the tasks they committed."""
    committed = 0
    sent = 0
    while time.monotonic() < stop_at:
        domains = [f"b{number}x{sent}x{n}.example.com" for n in range(BATCH_SIZE)]
        body = {"tasks": [{"target_domain": d} for d in domains]}
        started = time.monotonic()
        response = await http.post("/api/v1/batches", json=body)
        latencies_s.append(time.monotonic() - started)
        sent += 1
        if response.status_code != 201:
            raise RuntimeError(f"batch refused: {response.status_code} {response.text[:200]}")
        committed += BATCH_SIZE
    return committed


async def _batch_rate(
    ctx: BenchContext, port: int, duration_s: float, latencies_s: list[float]
) -> float:
    token = await fresh_token(ctx)
    headers = {"Authorization": f"Bearer {token}"}
    base_url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http:
        started = time.monotonic()
        stop_at = started + duration_s
        counts = await asyncio.gather(
            *(_batch_client(http, n, stop_at, latencies_s) for n in range(BATCH_CLIENTS))
        )
        elapsed_s = time.monotonic() - started
    rate = sum(counts) / elapsed_s
    print(f"  {BATCHES}: {rate:,.0f} tasks/s ({sum(counts)} in {elapsed_s:.1f} s)", flush=True)
    return rate


async def _single_rate(ctx: BenchContext, target: Target, duration_s: float) -> float:
    token = await fresh_token(ctx)
    figures = await run_load(target, token, SINGLE_CLIENTS, duration_s)
    rate = float(figures["ok"]) / float(figures["elapsed_s"])
    print(f"  {SINGLE}: {rate:,.0f} tasks/s ({figures['ok']} in {figures['elapsed_s']:.1f} s)")
    return rate


async def _transaction_times_s(ctx: BenchContext, samples: int) -> list[float]:
    """The batch create transaction alone, `samples` times, each on fresh domains."""
    await ctx.reset()
    times_s: list[float] = []
    for sample in range(samples):
        domains = [f"t{sample}x{n}.example.com" for n in range(BATCH_SIZE)]
        new = batches.NewBatch(
            id=uuid.uuid4(),
            user_id=1,
            config={"keywords": [], "regexes": []},
            max_attempts=3,
            request_hash="bench",
            idempotency_key=None,
            domains=domains,
            entries=[scan_entry(uuid.uuid4(), ctx.settings.queue_name) for _ in domains],
        )
        async with ctx.sessionmaker() as session:
            started = time.perf_counter()
            async with session.begin():
                await batches.insert_batch(session, new)
            times_s.append(time.perf_counter() - started)
    return times_s


async def run(ctx: BenchContext) -> ScenarioResult:
    duration_s = max(3.0, DURATION_S * ctx.scale)
    result = ScenarioResult(
        title=f"batch_create: tasks/s through batches of {BATCH_SIZE:,} against single creates",
        label_columns=["variant"],
        columns=["variant", "tasks_per_s", "x_single", "p50_ms", "p99_ms", "verdict"],
        params={"duration_s": duration_s, "batch_size": BATCH_SIZE, "reps": ctx.reps},
    )
    api, port = start_api(ctx, "batch-api")
    singles: list[float] = []
    batched: list[float] = []
    latencies_s: list[float] = []
    try:
        target = Target(REAL, port, "/api/v1/tasks", api.popen.pid)
        await _single_rate(ctx, target, 2.0)  # warm the pools and imports; not counted
        await _batch_rate(ctx, port, 2.0, [])
        for _ in range(ctx.reps):
            singles.append(await _single_rate(ctx, target, duration_s))
            batched.append(await _batch_rate(ctx, port, duration_s, latencies_s))
    finally:
        api.stop()
    tx_s = await _transaction_times_s(ctx, max(10, int(TX_SAMPLES * ctx.scale)))
    _add_rows(result, singles, batched, latencies_s, tx_s)
    return result


def _add_rows(
    result: ScenarioResult,
    singles: list[float],
    batched: list[float],
    latencies_s: list[float],
    tx_s: list[float],
) -> None:
    ratios = Spread.of([b / s for b, s in zip(batched, singles, strict=True)])
    row: dict[str, Any] = {"p50_ms": "", "p99_ms": "", "verdict": ""}
    result.rows += [
        {**row, "variant": SINGLE, "tasks_per_s": Spread.of(singles), "x_single": 1.0},
        {
            "variant": f"{BATCHES} (request)",
            "tasks_per_s": Spread.of(batched),
            "x_single": ratios,
            "p50_ms": round(ms(percentile(latencies_s, 0.5)), 1),
            "p99_ms": round(ms(percentile(latencies_s, 0.99)), 1),
            "verdict": verdict(ratios.median, "≥", TARGET_RATIO),
        },
        {
            **row,
            "variant": f"{BATCHES}: create transaction alone",
            "tasks_per_s": "",
            "x_single": "",
            "p50_ms": round(ms(percentile(tx_s, 0.5)), 1),
            "p99_ms": round(ms(percentile(tx_s, 0.99)), 1),
        },
    ]
    result.charts += [
        BarChart(
            "batch_create: tasks committed per second",
            "tasks/s",
            {SINGLE: Spread.of(singles), BATCHES: Spread.of(batched)},
        ),
        DistributionChart(
            f"batch_create: one batch of {BATCH_SIZE:,}",
            "ms",
            {"request": [ms(s) for s in latencies_s], "transaction": [ms(s) for s in tx_s]},
        ),
    ]
    result.notes += [
        f"Runs alternate (single, batches) {len(singles)} times; x_single pairs each batch run "
        f"with the single run of its round. Target: ≥ {TARGET_RATIO:g} times the single creates.",
        f"Single: {SINGLE_CLIENTS} clients from `bench.loadgen`. Batches: {BATCH_CLIENTS} "
        f"clients, each sending {BATCH_SIZE:,} new domains per request (httpx, this process).",
        "The create transaction alone: BEGIN, the one INSERT ... SELECT FROM unnest statement "
        "writing the batch, its tasks and their outbox rows, COMMIT; timed from this process.",
    ]
