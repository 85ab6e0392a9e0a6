"""e2e_drain: a backlog created while no worker runs, drained end to end, against a bare
Dramatiq no-op actor and against procrastinate.

scan-outbox: the tasks and their unpublished outbox rows are committed first; then one relay
process and one worker process (1 process, default SCAN_WORKER_CONCURRENCY) start together.
bare Dramatiq: the same number of messages enqueued first (one enqueue each, as the relay
sends), then Dramatiq's stock worker (1 process, 8 threads) runs a no-op actor on them: the
limit of the broker this design uses (bench/bare_dramatiq.py); done when every one is acked.
procrastinate: the same number of no-op jobs deferred first; then one
`procrastinate worker --concurrency 8`.
The clock runs from launching the processes (their start-up counts: it is part of a drain
after an outage) to the last task's or job's success as the database dated it; a second figure
runs from the first start to the last success. The variants alternate, in turns of
either order, so load from elsewhere on the machine falls on all of them.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import text

from bench import bare_dramatiq
from bench import procrastinate_peer as peer
from bench.common import (
    BarChart,
    BenchContext,
    Process,
    ScenarioResult,
    Spread,
    fill_tasks,
    start_process,
    start_relay,
    start_worker,
    verdict,
)

TASKS = 20_000
CONCURRENCY = 8
TARGET_RATIO = 3.0
TARGET_TO_BARE = 0.8
POLL_S = 0.25
BARE_POLL_S = 0.02
DRAIN_DEADLINE_S = 600.0
SCAN_OUTBOX = "scan-outbox: relay + worker, 1 process, default concurrency"
PROCRASTINATE = "procrastinate: worker, concurrency 8, no-op jobs"
BARE_DRAMATIQ = "bare Dramatiq: stock worker, 1 process, 8 threads, no-op actor"

_PENDING_SQL = text("SELECT count(*) FILTER (WHERE status <> 'succeeded'), count(*) FROM tasks")
_FAILED_SQL = text("SELECT count(*) FROM tasks WHERE status IN ('failed', 'cancelled')")
_SPAN_SQL = text(
    "SELECT extract(epoch FROM min(started_at))::float8,"
    " extract(epoch FROM max(finished_at))::float8 FROM tasks"
)


@dataclass(frozen=True)
class Drain:
    """One drain: tasks/s from launch and from the first start, both to the last success."""

    from_launch_per_s: float
    from_first_start_per_s: float
    startup_s: float


def _drain(count: int, launched: float, first_start: float, last_success: float) -> Drain:
    return Drain(
        count / (last_success - launched),
        count / (last_success - first_start),
        first_start - launched,
    )


async def _wait(
    until_done: Callable[[], Awaitable[bool]], processes: list[Process], poll_s: float = POLL_S
) -> None:
    deadline = time.monotonic() + DRAIN_DEADLINE_S
    while not await until_done():
        for process in processes:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited; see {process.log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the backlog was not drained within {DRAIN_DEADLINE_S:g} s")
        await asyncio.sleep(poll_s)


async def _bare_dramatiq(ctx: BenchContext, count: int) -> Drain:
    await ctx.reset()
    await asyncio.to_thread(bare_dramatiq.enqueue, ctx.settings.effective_broker_url, count)
    client = ctx.redis()
    first_start: float | None = None

    async def drained() -> bool:
        nonlocal first_start
        left = await asyncio.to_thread(bare_dramatiq.unfinished, client)
        if first_start is None and left < count:
            first_start = time.time()
        return left == 0

    launched = time.time()
    process = start_process(
        ctx, "e2e-drain-bare-dramatiq", bare_dramatiq.worker_command(sys.executable), ctx.env()
    )
    try:
        await _wait(drained, [process], BARE_POLL_S)
        finished = time.time()
    finally:
        process.stop()
        client.close()
    assert first_start is not None
    return _drain(count, launched, first_start, finished)


async def _scan_outbox(ctx: BenchContext, count: int) -> Drain:
    await ctx.reset()
    async with ctx.sessionmaker() as session, session.begin():
        await fill_tasks(session, count, ctx.settings.queue_name)
    await ctx.vacuum(tables="outbox, tasks")

    async def drained() -> bool:
        async with ctx.sessionmaker() as session:
            left, total = (await session.execute(_PENDING_SQL)).one()
            if (await session.execute(_FAILED_SQL)).scalar_one():
                raise RuntimeError("a task failed: the drain measures successes only")
        return bool(total == count and left == 0)

    launched = time.time()
    processes = [start_worker(ctx, "e2e-drain-worker")]
    try:
        processes.append(start_relay(ctx, "e2e-drain-relay"))
        await _wait(drained, processes)
    finally:
        for process in processes:
            process.stop()
    async with ctx.sessionmaker() as session:
        first_start, last_success = (await session.execute(_SPAN_SQL)).one()
    return _drain(count, launched, first_start, last_success)


async def _procrastinate(ctx: BenchContext, count: int) -> Drain:
    await peer.reset(ctx)
    await peer.defer_noop(ctx, count)
    await ctx.vacuum(tables="procrastinate_jobs, procrastinate_events")

    async def drained() -> bool:
        return await peer.unfinished(ctx) == 0

    launched = time.time()
    process = peer.launch_worker(ctx, "e2e-drain-procrastinate", CONCURRENCY)
    try:
        await _wait(drained, [process])
    finally:
        process.stop()
    first_start, last_success, succeeded = await peer.finished_span(ctx)
    if succeeded != count:
        raise RuntimeError(f"{succeeded} of {count} procrastinate jobs succeeded")
    return _drain(count, launched, first_start, last_success)


async def run(ctx: BenchContext) -> ScenarioResult:
    count = ctx.scaled(TASKS)
    await peer.install(ctx)
    variants: dict[str, Callable[[], Awaitable[Drain]]] = {
        SCAN_OUTBOX: lambda: _scan_outbox(ctx, count),
        BARE_DRAMATIQ: lambda: _bare_dramatiq(ctx, count),
        PROCRASTINATE: lambda: _procrastinate(ctx, count),
    }
    drains: dict[str, list[Drain]] = {name: [] for name in variants}
    for rep in range(ctx.reps):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in order:
            drains[name].append(await variants[name]())
    await peer.reset(ctx)
    return _result(ctx, count, drains)


def _result(ctx: BenchContext, count: int, drains: dict[str, list[Drain]]) -> ScenarioResult:
    result = ScenarioResult(
        title=f"e2e_drain: {count:,} tasks created while workers are stopped, then drained",
        columns=[
            "variant",
            "tasks_per_s",
            "from_first_start_per_s",
            "startup_s",
            "ratio_to_bare_dramatiq",
            "verdict_to_bare",
            "ratio_to_procrastinate",
            "verdict",
        ],
        params={"tasks": count, "concurrency": CONCURRENCY, "reps": ctx.reps},
    )
    rates = {name: Spread.of([d.from_launch_per_s for d in runs]) for name, runs in drains.items()}
    baseline = rates[PROCRASTINATE].median
    bare = rates[BARE_DRAMATIQ].median
    for name, runs in drains.items():
        ratio = round(rates[name].median / baseline, 2)
        to_bare = round(rates[name].median / bare, 2)
        result.rows.append(
            {
                "variant": name,
                "tasks_per_s": rates[name],
                "from_first_start_per_s": Spread.of([d.from_first_start_per_s for d in runs]),
                "startup_s": Spread.of([round(d.startup_s, 2) for d in runs]),
                "ratio_to_bare_dramatiq": to_bare,
                "verdict_to_bare": (
                    verdict(to_bare, "≥", TARGET_TO_BARE) if name == SCAN_OUTBOX else ""
                ),
                "ratio_to_procrastinate": ratio,
                "verdict": verdict(ratio, "≥", TARGET_RATIO) if name == SCAN_OUTBOX else "",
            }
        )
    result.charts.append(BarChart("e2e_drain: tasks/s, launch → last success", "tasks/s", rates))
    result.notes += [
        "tasks_per_s runs from launching the processes to the last success as the database "
        "dated it (tasks.finished_at, procrastinate's 'succeeded' event); from_first_start_per_s "
        "leaves out start-up (startup_s: launch → first start).",
        "scan-outbox scans end at once (SCAN_SCANNER=bench.stub_scanner:scan, a no-op): the "
        "worker's whole path runs (existence check, claim, lease, result write). "
        "procrastinate runs a no-op task with its log level at warning. The bare Dramatiq "
        "worker is Dramatiq's own (8 threads, its default prefetch) with a no-op actor and no "
        f"database; its end is the last ack, seen by polling every {BARE_POLL_S:g} s.",
        f"Variants alternate in order each repetition; ratios: median against median; targets "
        f"≥ {TARGET_TO_BARE:g} times bare Dramatiq and ≥ {TARGET_RATIO:g} times procrastinate.",
    ]
    return result
