"""io_bound: scans against a slow local site, the whole pipeline against the scan function alone.

A local site (bench/slow_site.py, its own process) answers after `BENCH_IO_DELAY_MS` (500 by
default) and never answers hosts named `hang…`: every `BENCH_IO_HANG_EVERY`-th target (100 by
default: 1 %), which cost a scan its fetch timeout (2 s here). Three variants, alternating:
- pipeline: TASKS tasks committed with their outbox rows, then one relay and one worker process
  (the real scanner, default SCAN_WORKER_CONCURRENCY) drain them;
- bare scanner: the same scan function over the same names, at the same concurrency, in a
  process of its own with no broker, database or logs (bench/bare_scan.py);
- old default: the pipeline with 8 scans in flight per process, what the thread-per-scan worker
  ran with its 8 threads (OLD_TASKS tasks: at 8 in flight a large backlog takes minutes).
Also measured in the pipeline runs: the worker process's peak RSS under load and its RSS and
CPU once idle.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from bench.common import (
    BarChart,
    BenchContext,
    Process,
    ScenarioResult,
    Spread,
    start_process,
    start_relay,
    verdict,
)
from bench.idle_cpu import tree_cpu_s, tree_pids
from scanctl.processes import worker_command
from shared.embedded import free_port
from shared.settings import Settings

TASKS = 3000
OLD_TASKS = 400
OLD_CONCURRENCY = 8
DELAY_MS = int(os.environ.get("BENCH_IO_DELAY_MS", "500"))
HANG_EVERY = int(os.environ.get("BENCH_IO_HANG_EVERY", "100"))
FETCH_TIMEOUT_S = 2
TARGET_TO_BARE = 0.8
TARGET_TO_OLD = 10.0
POLL_S = 0.25
IDLE_WINDOW_S = 5.0
DRAIN_DEADLINE_S = 600.0

_FILL_SQL = text(
    """
    WITH new_tasks AS (
        INSERT INTO tasks (id, user_id, target_domain, status)
        SELECT gen_random_uuid(), (SELECT min(id) FROM users),
               CASE WHEN :hang_every > 0 AND g % :hang_every = 0 THEN 'hang' ELSE 's' END
               || g || '.example.com',
               'pending'
        FROM generate_series(1, :count) g
        RETURNING id, user_id
    )
    INSERT INTO outbox (message_id, actor, queue, payload, task_id, user_id)
    SELECT gen_random_uuid(), 'scan_domain', :queue, jsonb_build_object('task_id', id::text), id,
           user_id
    FROM new_tasks
    """
)
_COUNTS_SQL = text(
    "SELECT count(*) FILTER (WHERE status = 'succeeded'),"
    " count(*) FILTER (WHERE status IN ('failed', 'cancelled')) FROM tasks"
)
_SPAN_SQL = text("SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 FROM tasks")


@dataclass(frozen=True)
class PipelineRun:
    scans_per_s: float
    peak_rss_mb: float
    idle_rss_mb: float
    idle_cpu_pct: float


def scan_env(ctx: BenchContext, site_port: int) -> dict[str, str]:
    return ctx.env(
        SCAN_ALLOW_PRIVATE="true",
        SCAN_RESOLVER_OVERRIDES="example.com=127.0.0.1",
        SCAN_SCHEMES="http",
        SCAN_HTTP_PORT=str(site_port),
        SCAN_FETCH_TIMEOUT_S=str(FETCH_TIMEOUT_S),
    )


def worker_rss_mb(root: int) -> float:
    """Resident memory of the worker processes under `root` (Dramatiq's main process left out:
    it only supervises), in MB; the largest when there are several."""
    sizes = [0.0]
    for pid in tree_pids(root)[1:]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(int(line.split()[1]) / 1024)
    return round(max(sizes), 1)


async def _bare(ctx: BenchContext, site_port: int, count: int, concurrency: int) -> float:
    command = [sys.executable, "-m", "bench.bare_scan", str(count), str(concurrency)]
    command.append(str(HANG_EVERY))
    done = await asyncio.to_thread(
        subprocess.run,
        command,
        env=scan_env(ctx, site_port),
        capture_output=True,
        text=True,
        timeout=DRAIN_DEADLINE_S,
        check=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["scans_per_s"])


async def _drain(ctx: BenchContext, count: int, worker: Process, relay: Process) -> float:
    """Wait for every task to succeed; the worker's peak RSS meanwhile."""
    deadline, peak = time.monotonic() + DRAIN_DEADLINE_S, 0.0
    while True:
        peak = max(peak, worker_rss_mb(worker.popen.pid))
        async with ctx.sessionmaker() as session:
            succeeded, failed = (await session.execute(_COUNTS_SQL)).one()
        if failed:
            raise RuntimeError(f"{failed} tasks failed: see {worker.log_path}")
        if succeeded == count:
            return peak
        for process in (worker, relay):
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited; see {process.log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not drained within {DRAIN_DEADLINE_S:g} s")
        await asyncio.sleep(POLL_S)


async def _pipeline(
    ctx: BenchContext, site_port: int, count: int, concurrency: int | None
) -> PipelineRun:
    await ctx.reset()
    async with ctx.sessionmaker() as session, session.begin():
        params = {"count": count, "queue": ctx.settings.queue_name, "hang_every": HANG_EVERY}
        await session.execute(_FILL_SQL, params)
    await ctx.vacuum(tables="outbox, tasks")
    env = scan_env(ctx, site_port)
    worker = start_process(ctx, "io-bound-worker", worker_command(1, concurrency), env)
    relay = None
    try:
        relay = start_relay(ctx, "io-bound-relay")
        peak = await _drain(ctx, count, worker, relay)
        root = worker.popen.pid
        before, started = tree_cpu_s(root), time.monotonic()
        await asyncio.sleep(IDLE_WINDOW_S)
        idle_pct = 100 * (tree_cpu_s(root) - before) / (time.monotonic() - started)
        idle_rss = worker_rss_mb(root)
    finally:
        for process in (worker, relay):
            if process is not None:
                process.stop()
    async with ctx.sessionmaker() as session:
        span_s = (await session.execute(_SPAN_SQL)).scalar_one()
    return PipelineRun(count / span_s, peak, idle_rss, round(idle_pct, 2))


async def run(ctx: BenchContext) -> ScenarioResult:
    count, old_count = ctx.scaled(TASKS), ctx.scaled(OLD_TASKS, minimum=100)
    concurrency = Settings(_env_file=None).worker_concurrency  # type: ignore[call-arg]
    site_port = free_port()
    site_command = [sys.executable, "-m", "bench.slow_site", str(site_port), str(DELAY_MS)]
    site = start_process(ctx, "io-bound-site", site_command, ctx.env())
    runs: dict[str, list[PipelineRun]] = {"pipeline": [], "old": []}
    bare: list[float] = []
    try:
        for rep in range(ctx.reps):
            order = ["pipeline", "bare", "old"]
            for name in order if rep % 2 == 0 else reversed(order):
                if name == "bare":
                    bare.append(await _bare(ctx, site_port, count, concurrency))
                elif name == "pipeline":
                    runs[name].append(await _pipeline(ctx, site_port, count, None))
                else:
                    runs[name].append(await _pipeline(ctx, site_port, old_count, OLD_CONCURRENCY))
    finally:
        site.stop()
    return _result(ctx, count, old_count, concurrency, runs, bare)


def _result(
    ctx: BenchContext,
    count: int,
    old_count: int,
    concurrency: int,
    runs: dict[str, list[PipelineRun]],
    bare_rates: list[float],
) -> ScenarioResult:
    pipeline = Spread.of([run.scans_per_s for run in runs["pipeline"]])
    old = Spread.of([run.scans_per_s for run in runs["old"]])
    bare = Spread.of(bare_rates)
    to_bare = round(pipeline.median / bare.median, 2)
    to_old = round(pipeline.median / old.median, 2)
    labels = {
        "pipeline": f"pipeline, {concurrency} in flight (default)",
        "bare": f"scan function alone, {concurrency} at once",
        "old": f"pipeline, {OLD_CONCURRENCY} in flight (the old 8-thread default)",
    }
    result = ScenarioResult(
        title=f"io_bound: scans of a site answering after {DELAY_MS} ms, 1 in {HANG_EVERY} hanging",
        columns=[
            "variant",
            "scans_per_s",
            "ratio",
            "verdict",
            "peak_rss_mb",
            "idle_rss_mb",
            "idle_cpu_pct",
        ],
        params={
            "tasks": count,
            "old_tasks": old_count,
            "concurrency": concurrency,
            "delay_ms": DELAY_MS,
            "hang_every": HANG_EVERY,
            "reps": ctx.reps,
        },
    )

    def memory(name: str) -> dict[str, Spread]:
        rows = runs[name]
        return {
            "peak_rss_mb": Spread.of([run.peak_rss_mb for run in rows]),
            "idle_rss_mb": Spread.of([run.idle_rss_mb for run in rows]),
            "idle_cpu_pct": Spread.of([run.idle_cpu_pct for run in rows]),
        }

    result.rows += [
        {
            "variant": labels["pipeline"],
            "scans_per_s": pipeline,
            "ratio": to_bare,
            "verdict": f"to bare: {verdict(to_bare, '≥', TARGET_TO_BARE)}",
            **memory("pipeline"),
        },
        {"variant": labels["bare"], "scans_per_s": bare, "ratio": 1.0, "verdict": ""},
        {
            "variant": labels["old"],
            "scans_per_s": old,
            "ratio": round(1 / to_old, 3),
            "verdict": "",
            **memory("old"),
        },
        {
            "variant": f"{labels['pipeline']} vs {labels['old']}",
            "scans_per_s": pipeline,
            "ratio": to_old,
            "verdict": f"to old: {verdict(to_old, '≥', TARGET_TO_OLD)}",
        },
    ]
    result.charts.append(
        BarChart(
            "io_bound: scans/s",
            "scans/s",
            {labels[k]: v for k, v in (("pipeline", pipeline), ("bare", bare), ("old", old))},
        )
    )
    result.notes += [
        f"Pipeline rates run from the first task's start to the last one's finish as the "
        f"database dated them; the bare scanner's from its first scan to its last. The fetch "
        f"timeout is {FETCH_TIMEOUT_S} s, so each hanging target holds a slot that long.",
        "ratio: median against the bare scanner's median (the old default's row: against the "
        f"default pipeline). Targets: pipeline ≥ {TARGET_TO_BARE:g} times bare at the same "
        f"concurrency; default ≥ {TARGET_TO_OLD:g} times the old default.",
        "peak_rss_mb: the worker process (not Dramatiq's supervising parent) sampled every "
        f"{POLL_S:g} s under load; idle_rss_mb and idle_cpu_pct (% of one core, the whole "
        f"worker tree) over {IDLE_WINDOW_S:g} s after the drain.",
        "BENCH_IO_DELAY_MS and BENCH_IO_HANG_EVERY (0: no hanging targets) change the site.",
    ]
    return result
