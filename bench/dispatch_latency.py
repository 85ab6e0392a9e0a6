"""dispatch_latency: from a task's commit to a worker starting it, at 5 and at 200 creates/s.

Five ways to dispatch, measured in turns (the order rotates each repetition) on the same
servers, every process started once and kept for the whole scenario:

- scan-outbox: the outbox row committed with the task, a real relay process woken by the
  wake-up hint sent after the commit (as the API sends it),
  a real Dramatiq worker process polling at `SCAN_WORKER_IDLE_POLL_MS` (the default);
- the same with a worker whose idle sleep is capped at Dramatiq's default (1000 ms), on a
  queue of its own;
- countdown=2: what the outbox replaced, the task committed, then sent with a 2 s delay;
- direct send: the task committed, then sent at once (fast, but the race and the lost
  message are back);
- procrastinate: a no-op job deferred into the same PostgreSQL, a `procrastinate worker`
  process of the same concurrency.

Commit time is taken in this process right after COMMIT (or the defer) returns; start is the
task's `started_at` (the claim transaction's `now()`) or procrastinate's 'started' event, all
on this machine's one clock. Then every worker sits idle while its CPU is read from /proc.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import procrastinate
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import select, text

from bench import dispatch_table, idle_cpu
from bench import procrastinate_peer as peer
from bench.common import (
    BenchContext,
    Process,
    ScenarioResult,
    Spread,
    start_relay,
    start_worker,
)
from bench.dispatch_table import (
    COUNTDOWN,
    DIRECT,
    MODES,
    PROCRASTINATE,
    SCAN_OUTBOX,
    SCAN_OUTBOX_DEFAULT_CAP,
    Run,
)
from shared import wakeups
from shared.db import tasks
from shared.db.models import OutboxMessage, Task
from shared.dramatiq_broker import build_message, create_broker
from shared.messages import scan_entry

DURATION_S = {5.0: 10.0, 200.0: 5.0}
MIN_DURATION_S = 3.0
# One creator keeps 5/s easily; 200/s needs a few in flight on a shared 2-CPU machine.
CREATORS = {5.0: 1, 200.0: 4}
CONCURRENCY = 8
COUNTDOWN_MS = 2000
DEFAULT_CAP_QUEUE = "scans_poll1000"
SETTLE_DEADLINE_S = 60.0
IDLE_WINDOW_S = 7.0

_INSERT_TASK_SQL = text(
    "INSERT INTO tasks (id, user_id, target_domain) VALUES (:id, (SELECT min(id) FROM users), :d)"
)

Created = tuple[Hashable, float]


@dataclass
class Rig:
    """Everything the modes share: the processes and this process's clients."""

    ctx: BenchContext
    poll_ms: int
    broker: RedisBroker
    peer_app: procrastinate.App
    hints: wakeups.Hints
    processes: dict[str, Process] = field(default_factory=dict)


async def _create_outbox(rig: Rig, index: int, queue: str) -> Created:
    task_id = uuid.uuid4()
    new = tasks.NewTask(user_id=1, target_domain=f"l{index}.example.com", config={}, max_attempts=3)
    async with rig.ctx.sessionmaker() as session, session.begin():
        await tasks.insert_task_with_message(session, task_id, new, scan_entry(task_id, queue))
    committed = time.time()
    # What the API does after its commit: the relay's wake-up.
    await rig.hints.outbox()
    return task_id, committed


async def _create_then_send(rig: Rig, index: int, delay_ms: int | None) -> Created:
    task_id = uuid.uuid4()
    async with rig.ctx.sessionmaker() as session, session.begin():
        await session.execute(_INSERT_TASK_SQL, {"id": task_id, "d": f"l{index}.example.com"})
    committed = time.time()
    message = build_message(
        uuid.uuid4(), rig.ctx.settings.queue_name, "scan_domain", {"task_id": str(task_id)}
    )
    await asyncio.to_thread(rig.broker.enqueue, message, delay=delay_ms)
    return task_id, committed


async def _defer(rig: Rig, index: int) -> Created:
    job_id = await rig.peer_app.tasks[peer.TASK_NAME].defer_async()
    return job_id, time.time()


def _creator(rig: Rig, mode: str) -> Callable[[int], Awaitable[Created]]:
    creators: dict[str, Callable[[int], Awaitable[Created]]] = {
        SCAN_OUTBOX: lambda i: _create_outbox(rig, i, rig.ctx.settings.queue_name),
        SCAN_OUTBOX_DEFAULT_CAP: lambda i: _create_outbox(rig, i, DEFAULT_CAP_QUEUE),
        COUNTDOWN: lambda i: _create_then_send(rig, i, COUNTDOWN_MS),
        DIRECT: lambda i: _create_then_send(rig, i, None),
        PROCRASTINATE: lambda i: _defer(rig, i),
    }
    return creators[mode]


async def _drive(
    create: Callable[[int], Awaitable[Created]], total: int, rate_per_s: float, creators: int
) -> tuple[dict[Hashable, float], float]:
    """`total` creates on a fixed schedule shared by `creators` coroutines; commit times and
    the rate actually achieved (a creator that falls behind goes on without waiting)."""
    began, commits = time.monotonic(), {}

    async def creator(first: int) -> None:
        for index in range(first, total, creators):
            delay_s = began + index / rate_per_s - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            key, committed = await create(index)
            commits[key] = committed

    await asyncio.gather(*(creator(first) for first in range(creators)))
    span_s = max(commits.values()) - min(commits.values())
    return commits, (len(commits) - 1) / span_s if span_s > 0 else float("nan")


async def _task_stamps(ctx: BenchContext, ids: list[Any]) -> dict[Any, tuple[float | None, ...]]:
    """Each task's (started_at, published_at of its outbox row if any) as epoch seconds."""
    stmt = (
        select(Task.id, Task.started_at, OutboxMessage.published_at)
        .outerjoin(OutboxMessage, OutboxMessage.task_id == Task.id)
        .where(Task.id.in_(ids))
    )
    async with ctx.sessionmaker() as session:
        rows = (await session.execute(stmt)).all()
    return {row[0]: tuple(v.timestamp() if v else None for v in row[1:]) for row in rows}


async def _stamps(rig: Rig, mode: str, keys: list[Any]) -> dict[Any, tuple[float | None, ...]]:
    if mode == PROCRASTINATE:
        starts = await peer.job_start_times(rig.ctx, keys)
        return {key: (starts.get(key), None) for key in keys}
    return await _task_stamps(rig.ctx, keys)


async def _settle(rig: Rig, mode: str, commits: dict[Hashable, float]) -> Run:
    keys = list(commits)
    deadline = time.monotonic() + SETTLE_DEADLINE_S
    while True:
        stamps = await _stamps(rig, mode, keys)
        if len(stamps) == len(keys) and all(s[0] is not None for s in stamps.values()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mode}: not every task started within {SETTLE_DEADLINE_S:g} s")
        await asyncio.sleep(0.1)
    start_ms = [1000 * (s[0] - commits[k]) for k, s in stamps.items() if s[0] is not None]
    publish_ms = [1000 * (s[1] - commits[k]) for k, s in stamps.items() if s[1] is not None]
    return Run(start_ms, publish_ms, float("nan"))


async def _measure(rig: Rig, mode: str, rate_per_s: float) -> Run:
    # procrastinate's tables are kept: its running worker needs its own row, and jobs are
    # told apart by id.
    await rig.ctx.reset()
    duration_s = max(MIN_DURATION_S, DURATION_S[rate_per_s] * rig.ctx.scale)
    total = max(10, round(rate_per_s * duration_s))
    commits, achieved = await _drive(_creator(rig, mode), total, rate_per_s, CREATORS[rate_per_s])
    run = await _settle(rig, mode, commits)
    run.achieved_per_s = achieved
    return run


@asynccontextmanager
async def _rig(ctx: BenchContext) -> AsyncIterator[Rig]:
    """Every process and client, ready: each mode has started one task before this yields."""
    await peer.install(ctx)
    await ctx.reset()
    await peer.reset(ctx)
    poll_ms = ctx.settings.worker_idle_poll_ms
    async with AsyncExitStack() as stack:
        broker = create_broker(ctx.settings, middleware=[], socket_timeout_s=10)
        stack.callback(broker.client.connection_pool.disconnect)
        connector = procrastinate.PsycopgConnector(
            conninfo=peer.conninfo(ctx), min_size=1, max_size=max(CREATORS.values())
        )
        peer_app = await stack.enter_async_context(peer.build_app(connector).open_async())
        hints = wakeups.Hints(wakeups.create_client(ctx.settings))
        stack.push_async_callback(hints.aclose)
        rig = Rig(ctx, poll_ms, broker, peer_app, hints)
        starters: dict[str, Callable[[], Process]] = {
            "relay": lambda: start_relay(ctx, "latency-relay"),
            "worker": lambda: start_worker(
                ctx, "latency-worker", SCAN_WORKER_IDLE_POLL_MS=str(poll_ms)
            ),
            "worker_default_cap": lambda: start_worker(
                ctx,
                "latency-worker-poll1000",
                SCAN_WORKER_IDLE_POLL_MS=str(dispatch_table.DRAMATIQ_DEFAULT_POLL_MS),
                SCAN_QUEUE_NAME=DEFAULT_CAP_QUEUE,
            ),
        }
        for name, start in starters.items():
            rig.processes[name] = start()
            stack.callback(rig.processes[name].stop)
        rig.processes["procrastinate"] = await peer.start_worker(
            ctx, "latency-procrastinate", CONCURRENCY
        )
        stack.callback(rig.processes["procrastinate"].stop)
        for mode in MODES:
            # Warm-up: proves each path works end to end and opens every connection.
            await _settle(rig, mode, dict([await _creator(rig, mode)(0)]))
        yield rig


async def _idle_cpu(rig: Rig) -> dict[str, Spread]:
    """% of one core each idle worker (and the relay and Redis) burns, over 3 windows."""
    await rig.ctx.reset()
    # Long enough for every consumer's backoff to reach its cap.
    await asyncio.sleep(3.0)
    roots = {name: process.popen.pid for name, process in rig.processes.items()}
    window_s = max(3.0, IDLE_WINDOW_S * rig.ctx.scale)
    client = rig.ctx.redis()
    try:
        windows = [await idle_cpu.idle_cpu_pct(roots, client, window_s) for _ in range(3)]
    finally:
        client.close()
    return {name: Spread.of([w[name] for w in windows]) for name in windows[0]}


async def run(ctx: BenchContext) -> ScenarioResult:
    runs: dict[tuple[str, float], list[Run]] = {}
    async with _rig(ctx) as rig:
        for rep in range(ctx.reps):
            for rate_per_s in dispatch_table.RATES_PER_S:
                shift = rep % len(MODES)
                for mode in MODES[shift:] + MODES[:shift]:
                    run_ = await _measure(rig, mode, rate_per_s)
                    runs.setdefault((mode, rate_per_s), []).append(run_)
            cpu = await _idle_cpu(rig)
    return dispatch_table.build(ctx, rig.poll_ms, runs, cpu)
