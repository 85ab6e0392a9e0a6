"""dispatch_latency: from a task's commit to its publication and to a worker starting it.

Three ways to dispatch, each at idle and under a steady create load, with a real
relay process and a real Dramatiq worker process:

- notify: the relay woken by LISTEN/NOTIFY (the default);
- poll: the relay with its listener off, woken only by its interval poll;
- baseline: no relay; the old way, the message sent right after the commit with a
  2 s countdown (a Dramatiq delay), kept here only for comparison.

Commit time is taken in this process right after COMMIT returns; publication is
the outbox row's published_at, start the task's started_at (the same clock).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select

from bench.common import BenchContext, Process, ScenarioResult, ms, percentile, start_relay
from bench.common import start_worker as start_worker_process
from shared.broker import build_message, create_broker
from shared.db import queries
from shared.db.models import OutboxMessage, Task
from shared.embedded import free_port
from shared.messages import scan_entry

COUNTDOWN_MS = 2000
IDLE_RATE = 5.0
LOAD_RATE = 30.0
DURATION_S = 12.0
SETTLE_DEADLINE_S = 120.0

AfterCommit = Callable[[uuid.UUID], Awaitable[None]]


@dataclass(frozen=True)
class Load:
    name: str
    rate_per_s: float


async def _create_at_rate(
    ctx: BenchContext, load: Load, duration_s: float, after_commit: AfterCommit | None
) -> dict[uuid.UUID, float]:
    """Create tasks at `load.rate_per_s`, each in its own transaction; commit wall times."""
    total = max(10, int(load.rate_per_s * duration_s))
    started, commits = time.monotonic(), {}
    for index in range(total):
        delay_s = started + index / load.rate_per_s - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        task_id = uuid.uuid4()
        new = queries.NewTask(
            user_id=1, target_domain=f"l{index}.example.com", config={}, max_attempts=3
        )
        async with ctx.sessionmaker() as session, session.begin():
            entry = scan_entry(task_id, ctx.settings.queue_name)
            await queries.insert_task_with_message(session, task_id, new, entry)
        commits[task_id] = time.time()
        if after_commit is not None:
            await after_commit(task_id)
    return commits


async def _timestamps(
    ctx: BenchContext, ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[float | None, float | None]]:
    """Each task's (published_at, started_at) as epoch seconds."""
    stmt = (
        select(Task.id, OutboxMessage.published_at, Task.started_at)
        .join(OutboxMessage, OutboxMessage.task_id == Task.id)
        .where(Task.id.in_(ids))
    )
    async with ctx.sessionmaker() as session:
        rows = (await session.execute(stmt)).all()
    return {
        row[0]: (row[1].timestamp() if row[1] else None, row[2].timestamp() if row[2] else None)
        for row in rows
    }


async def _measure(
    ctx: BenchContext, load: Load, duration_s: float, after_commit: AfterCommit | None
) -> dict[str, float]:
    commits = await _create_at_rate(ctx, load, duration_s, after_commit)
    ids = list(commits)
    deadline = time.monotonic() + SETTLE_DEADLINE_S
    while True:
        stamps = await _timestamps(ctx, ids)
        if all(start is not None for _, start in stamps.values()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"tasks did not all start within {SETTLE_DEADLINE_S}s")
        await asyncio.sleep(0.2)
    published = [p - commits[i] for i, (p, _) in stamps.items() if p is not None]
    started = [s - commits[i] for i, (_, s) in stamps.items() if s is not None]
    return {
        "tasks": len(ids),
        "publish_p50_ms": ms(percentile(published, 0.5)) if published else float("nan"),
        "publish_p99_ms": ms(percentile(published, 0.99)) if published else float("nan"),
        "start_p50_ms": ms(percentile(started, 0.5)),
        "start_p99_ms": ms(percentile(started, 0.99)),
    }


async def _with_relay(
    ctx: BenchContext, load: Load, duration_s: float, **relay_env: str
) -> dict[str, float]:
    await ctx.reset()
    relay = start_relay(ctx, f"latency-relay-{load.name}", **relay_env)
    try:
        return await _measure(ctx, load, duration_s, None)
    finally:
        relay.stop()


async def _baseline(ctx: BenchContext, load: Load, duration_s: float) -> dict[str, float]:
    """Commit, then send with a countdown: what the outbox replaced."""
    await ctx.reset()
    broker = create_broker(ctx.settings, middleware=[], socket_timeout_s=10)

    async def send_with_countdown(task_id: uuid.UUID) -> None:
        message = build_message(
            uuid.uuid4(), ctx.settings.queue_name, "scan_domain", {"task_id": str(task_id)}
        )
        await asyncio.to_thread(broker.enqueue, message, delay=COUNTDOWN_MS)

    try:
        return await _measure(ctx, load, duration_s, send_with_countdown)
    finally:
        broker.client.connection_pool.disconnect()


def _worker(ctx: BenchContext, name: str, **env: str) -> Process:
    # Scans end at once: the target's port refuses connections (a result, not an error).
    return start_worker_process(
        ctx,
        name,
        SCAN_RESOLVER_OVERRIDES="example.com=127.0.0.1",
        SCAN_ALLOW_PRIVATE="true",
        SCAN_SCHEMES="http",
        SCAN_HTTP_PORT=str(free_port()),
        **env,
    )


async def run(ctx: BenchContext) -> ScenarioResult:
    duration_s = max(3.0, DURATION_S * ctx.scale)
    loads = [Load("idle", IDLE_RATE), Load("load", LOAD_RATE)]
    result = ScenarioResult(
        title="dispatch_latency: commit → publish and commit → worker start",
        columns=[
            "mode",
            "load",
            "tasks",
            "publish_p50_ms",
            "publish_p99_ms",
            "start_p50_ms",
            "start_p99_ms",
            "start_p50_vs_baseline",
        ],
        params={"duration_s": duration_s, "rates_per_s": [load.rate_per_s for load in loads]},
    )
    worker = _worker(ctx, "latency-worker")
    try:
        for load in loads:
            rows = {
                "notify": await _with_relay(ctx, load, duration_s),
                "poll (listener off)": await _with_relay(
                    ctx, load, duration_s, SCAN_RELAY_LISTEN_ENABLED="false"
                ),
                "baseline: commit, then send with 2 s countdown": await _baseline(
                    ctx, load, duration_s
                ),
            }
            _add_rows(result, load, rows)
    finally:
        worker.stop()
    worker = _worker(ctx, "latency-worker-100ms", dramatiq_worker_timeout="100")
    try:
        for load in loads:
            figures = await _with_relay(ctx, load, duration_s)
            baseline = next(
                row["start_p50_ms"]
                for row in result.rows
                if row["load"] == load.name and row["mode"].startswith("baseline")
            )
            ratio = round(figures["start_p50_ms"] / baseline, 3)
            result.rows.append(
                {
                    "mode": "notify, worker idle poll capped at 100 ms",
                    "load": load.name,
                    **figures,
                    "start_p50_vs_baseline": ratio,
                }
            )
    finally:
        worker.stop()
    result.notes += [
        f"idle: {IDLE_RATE:g} tasks/s, load: {LOAD_RATE:g} tasks/s, {duration_s:g} s each.",
        "A Dramatiq worker with an empty queue polls Redis with a growing sleep capped by "
        "dramatiq_worker_timeout (1000 ms by default): at idle that, not the relay, dominates "
        "commit → start; the last rows lower the cap (a worker setting, not the relay's).",
    ]
    return result


def _add_rows(result: ScenarioResult, load: Load, rows: dict[str, dict[str, float]]) -> None:
    baseline = rows["baseline: commit, then send with 2 s countdown"]["start_p50_ms"]
    for mode, figures in rows.items():
        ratio = round(figures["start_p50_ms"] / baseline, 3)
        result.rows.append(
            {"mode": mode, "load": load.name, **figures, "start_p50_vs_baseline": ratio}
        )
