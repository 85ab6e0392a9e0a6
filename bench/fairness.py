"""fairness: one client's large batch against another client's single scans, and the broker's
memory under a backlog of a million tasks.

A local site (bench/slow_site.py) answers every request after 1 s. One relay process and one
worker process (the real scanner, default concurrency and window) run throughout a phase:
- idle: client B alone creates a single scan every `SINGLE_EVERY_S`;
- alone: client A's batch of `TASKS` (batches of 1,000, as the API writes them) drains;
- shared: the same batch, and client B's single scans created meanwhile until A's drain ends.
B's time runs from its task's commit to its end (tasks.created_at → finished_at); A's drain
rate from its first start to its last end. Targets: B's p99 while A drains within B's idle
p99 + 1 s; A's drain with B beside it ≥ 0.95 of A's drain alone.

memory: `BACKLOG` pending tasks of one client, one relay and no worker: Redis's used memory
once the relay has filled the client's window, against an empty Redis (target < 64 MB); and
what the same backlog would take as one broker queue (bytes per message times the backlog).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import text

from bench.common import (
    BenchContext,
    DistributionChart,
    Process,
    ScenarioResult,
    Spread,
    fill_tasks,
    ms,
    percentile,
    start_process,
    start_relay,
    verdict,
)
from bench.io_bound import scan_env
from scanctl.processes import worker_command
from shared.db import batches, tasks, users
from shared.embedded import free_port
from shared.messages import scan_entry

TASKS = 10_000
BATCH = 1000
BACKLOG = 1_000_000
FILL_CHUNK = 100_000
DELAY_MS = 1000
SINGLE_EVERY_S = 1.0
IDLE_SINGLES = 15
TARGET_EXTRA_P99_S = 1.0
TARGET_DRAIN_RATIO = 0.95
TARGET_MEMORY_MB = 64.0
POLL_S = 0.25
DRAIN_DEADLINE_S = 600.0

_LATENCY_SQL = text(
    "SELECT extract(epoch FROM finished_at - created_at)::float8, status FROM tasks"
    " WHERE id = ANY(CAST(:ids AS uuid[])) AND finished_at IS NOT NULL"
)
_DRAIN_SQL = text(
    "SELECT count(*) FILTER (WHERE finished_at IS NOT NULL),"
    " count(*) FILTER (WHERE status IN ('failed', 'cancelled')),"
    " extract(epoch FROM max(finished_at) - min(started_at))::float8"
    " FROM tasks WHERE batch_id IS NOT NULL"
)


@dataclass(frozen=True)
class Phase:
    single_latencies_s: list[float]
    drain_per_s: float | None


@dataclass
class Clients:
    bulk: int
    single: int


async def _clients(ctx: BenchContext) -> Clients:
    await ctx.reset()
    async with ctx.sessionmaker() as session, session.begin():
        bulk = await users.insert_user(session, "bulk", uuid.uuid4().hex, False)
        single = await users.insert_user(session, "single", uuid.uuid4().hex, False)
    return Clients(bulk.id, single.id)


async def _submit_batches(ctx: BenchContext, user_id: int, count: int) -> None:
    queue = ctx.settings.queue_name
    for start in range(0, count, BATCH):
        size = min(BATCH, count - start)
        task_ids = [uuid.uuid4() for _ in range(size)]
        new = batches.NewBatch(
            id=uuid.uuid4(),
            user_id=user_id,
            config={},
            max_attempts=3,
            request_hash=uuid.uuid4().hex,
            idempotency_key=None,
            domains=[f"a{start + n}.example.com" for n in range(size)],
            entries=[scan_entry(task_id, queue) for task_id in task_ids],
        )
        async with ctx.sessionmaker() as session, session.begin():
            await batches.insert_batch(session, new)


async def _submit_single(ctx: BenchContext, user_id: int, index: int) -> uuid.UUID:
    task_id = uuid.uuid4()
    new = tasks.NewTask(
        user_id=user_id, target_domain=f"b{index}.example.com", config={}, max_attempts=3
    )
    entry = scan_entry(task_id, ctx.settings.queue_name)
    async with ctx.sessionmaker() as session, session.begin():
        await tasks.insert_task_with_message(session, task_id, new, entry)
    return task_id


async def _latencies(ctx: BenchContext, ids: list[uuid.UUID]) -> list[float]:
    deadline = time.monotonic() + DRAIN_DEADLINE_S
    while True:
        async with ctx.sessionmaker() as session:
            rows = (await session.execute(_LATENCY_SQL, {"ids": ids})).all()
        if len(rows) == len(ids):
            if any(status != "succeeded" for _, status in rows):
                raise RuntimeError("a single scan did not succeed")
            return [latency for latency, _ in rows]
        if time.monotonic() > deadline:
            raise RuntimeError("single scans did not end in time")
        await asyncio.sleep(POLL_S)


async def _drain_state(ctx: BenchContext) -> tuple[int, float | None]:
    async with ctx.sessionmaker() as session:
        ended, failed, span_s = (await session.execute(_DRAIN_SQL)).one()
    if failed:
        raise RuntimeError(f"{failed} batch tasks failed")
    return int(ended), span_s


@asynccontextmanager
async def _stack(ctx: BenchContext, site_port: int, name: str) -> AsyncIterator[list[Process]]:
    env = scan_env(ctx, site_port)
    processes = [start_process(ctx, f"fairness-{name}-worker", worker_command(1), env)]
    try:
        processes.append(start_relay(ctx, f"fairness-{name}-relay"))
        yield processes
    finally:
        for process in processes:
            process.stop()


def _check_alive(processes: list[Process]) -> None:
    for process in processes:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited; see {process.log_path}")


async def _idle(ctx: BenchContext, site_port: int) -> Phase:
    clients = await _clients(ctx)
    async with _stack(ctx, site_port, "idle") as processes:
        ids = []
        for index in range(IDLE_SINGLES):
            ids.append(await _submit_single(ctx, clients.single, index))
            _check_alive(processes)
            await asyncio.sleep(SINGLE_EVERY_S)
        return Phase(await _latencies(ctx, ids), None)


async def _drain(ctx: BenchContext, site_port: int, count: int, *, with_singles: bool) -> Phase:
    clients = await _clients(ctx)
    async with _stack(ctx, site_port, "shared" if with_singles else "alone") as processes:
        await _submit_batches(ctx, clients.bulk, count)
        ids: list[uuid.UUID] = []
        deadline = time.monotonic() + DRAIN_DEADLINE_S
        while (state := await _drain_state(ctx))[0] < count:
            _check_alive(processes)
            if time.monotonic() > deadline:
                raise RuntimeError("the batch did not drain in time")
            if with_singles:
                ids.append(await _submit_single(ctx, clients.single, len(ids)))
                await asyncio.sleep(SINGLE_EVERY_S)
            else:
                await asyncio.sleep(POLL_S)
        latencies = await _latencies(ctx, ids)
    span_s = state[1]
    assert span_s is not None
    return Phase(latencies, count / span_s)


async def _memory(ctx: BenchContext, backlog: int) -> tuple[float, int, float]:
    """(Redis MB used by the broker with `backlog` pending, messages in it, bytes each)."""
    await ctx.reset()
    client = ctx.redis()
    try:
        for start in range(0, backlog, FILL_CHUNK):
            # One transaction per chunk: a million rows in one would pass the statement timeout.
            async with ctx.sessionmaker() as session, session.begin():
                size = min(FILL_CHUNK, backlog - start)
                await fill_tasks(session, size, ctx.settings.queue_name)
        await ctx.vacuum(tables="outbox, tasks")
        empty = int(client.info("memory")["used_memory"])
        relay = start_relay(ctx, "fairness-memory-relay")
        try:
            queue = f"dramatiq:{ctx.settings.queue_name}"
            deadline = time.monotonic() + DRAIN_DEADLINE_S
            while client.llen(queue) < ctx.settings.relay_client_window:
                if time.monotonic() > deadline:
                    raise RuntimeError("the relay did not fill the window")
                await asyncio.sleep(POLL_S)
            await asyncio.sleep(3 * ctx.settings.relay_poll_interval_s)  # a few more cycles
            used = int(client.info("memory")["used_memory"]) - empty
            messages = int(client.llen(queue))
        finally:
            relay.stop()
    finally:
        client.close()
    return used / 2**20, messages, used / max(messages, 1)


async def run(ctx: BenchContext) -> ScenarioResult:
    count, backlog = ctx.scaled(TASKS), ctx.scaled(BACKLOG, minimum=10_000)
    site_port = free_port()
    site_command = [sys.executable, "-m", "bench.slow_site", str(site_port), str(DELAY_MS)]
    site = start_process(ctx, "fairness-site", site_command, ctx.env())
    idle: list[Phase] = []
    alone: list[Phase] = []
    shared: list[Phase] = []
    try:
        for _ in range(ctx.reps):
            idle.append(await _idle(ctx, site_port))
            alone.append(await _drain(ctx, site_port, count, with_singles=False))
            shared.append(await _drain(ctx, site_port, count, with_singles=True))
    finally:
        site.stop()
    memory = await _memory(ctx, backlog)
    return _result(ctx, count, backlog, idle, alone, shared, memory)


def _result(
    ctx: BenchContext,
    count: int,
    backlog: int,
    idle: list[Phase],
    alone: list[Phase],
    shared: list[Phase],
    memory: tuple[float, int, float],
) -> ScenarioResult:
    idle_s = [s for phase in idle for s in phase.single_latencies_s]
    shared_s = [s for phase in shared for s in phase.single_latencies_s]
    idle_p99, shared_p99 = percentile(idle_s, 0.99), percentile(shared_s, 0.99)
    extra_s = shared_p99 - idle_p99
    alone_rate = Spread.of([round(p.drain_per_s or 0, 1) for p in alone])
    shared_rate = Spread.of([round(p.drain_per_s or 0, 1) for p in shared])
    drain_ratio = round(shared_rate.median / alone_rate.median, 3)
    used_mb, messages, per_message = memory
    result = ScenarioResult(
        title=f"fairness: a {count:,}-scan batch beside another client's single scans",
        columns=["measure", "value", "target", "verdict"],
        params={"tasks": count, "backlog": backlog, "site_delay_ms": DELAY_MS},
    )
    result.rows += [
        {
            "measure": "single scan, idle: p50 / p99 ms",
            "value": f"{ms(percentile(idle_s, 0.5))} / {ms(idle_p99)}",
            "target": "",
            "verdict": "",
        },
        {
            "measure": "single scan beside the batch: p50 / p99 ms",
            "value": f"{ms(percentile(shared_s, 0.5))} / {ms(shared_p99)}",
            "target": "",
            "verdict": "",
        },
        {
            "measure": "single scan p99 beside the batch minus idle p99 (s)",
            "value": round(extra_s, 3),
            "target": f"≤ {TARGET_EXTRA_P99_S:g}",
            "verdict": verdict(extra_s, "≤", TARGET_EXTRA_P99_S),
        },
        {
            "measure": "batch drain alone (scans/s)",
            "value": alone_rate,
            "target": "",
            "verdict": "",
        },
        {
            "measure": "batch drain beside single scans (scans/s)",
            "value": shared_rate,
            "target": "",
            "verdict": "",
        },
        {
            "measure": "batch drain beside / alone",
            "value": drain_ratio,
            "target": f"≥ {TARGET_DRAIN_RATIO:g}",
            "verdict": verdict(drain_ratio, "≥", TARGET_DRAIN_RATIO),
        },
        {
            "measure": f"Redis MB with {backlog:,} tasks pending",
            "value": round(used_mb, 2),
            "target": f"< {TARGET_MEMORY_MB:g}",
            "verdict": verdict(used_mb, "≤", TARGET_MEMORY_MB),
        },
        {
            "measure": "messages in the broker / bytes each",
            "value": f"{messages} / {round(per_message)}",
            "target": "",
            "verdict": "",
        },
        {
            "measure": f"the same {backlog:,} as one broker queue (MB, bytes each times backlog)",
            "value": round(per_message * backlog / 2**20, 1),
            "target": "",
            "verdict": "",
        },
    ]
    result.charts.append(
        DistributionChart(
            "fairness: single scan, commit → end",
            "s",
            {"idle": idle_s, f"beside a {count:,}-scan batch": shared_s},
        )
    )
    result.notes.append(
        f"One worker process (default concurrency), one relay, default window "
        f"(SCAN_RELAY_CLIENT_WINDOW={ctx.settings.relay_client_window}); the site answers "
        f"after {DELAY_MS} ms; single scans every {SINGLE_EVERY_S:g} s; {ctx.reps} reps."
    )
    return result
