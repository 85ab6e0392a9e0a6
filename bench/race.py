"""race: how often a worker is sent a task it cannot see, per way of dispatching.

The same load for each method: `CREATORS` coroutines creating tasks back to back for
the run's duration, each in its own transaction. A real Dramatiq worker process
(`bench.naive_worker`) looks each task up once, with no retry, and counts it found
or missing. The methods:

- send, then commit: the message is sent inside the transaction, before COMMIT;
- commit, then send: the message is sent right after COMMIT returns;
- scan-outbox: the task and its outbox row in one statement; a real relay publishes it.

A missing task that is in the database afterwards is the race itself: the worker
looked before the commit was visible. Commit-then-send cannot miss, but it loses the
message whenever the process dies between COMMIT and send, shown by SIGKILLing a
creator process (`bench.race_creator`) mid-load; scan-outbox can do neither.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench.common import (
    BarChart,
    BenchContext,
    Process,
    ScenarioResult,
    Spread,
    backlog_left,
    start_process,
    start_relay,
    verdict,
)
from shared import keys
from shared.db import tasks
from shared.db.models import Task
from shared.dramatiq_broker import build_message, create_broker
from shared.messages import OutboxEntry

QUEUE = "bench-naive"
FOUND_KEY = "bench:race:found"
MISSING_KEY = "bench:race:missing"
MISSING_IDS_KEY = "bench:race:missing_ids"
# Every task id a message arrived for: a lost message is a committed id missing here.
SEEN_IDS_KEY = "bench:race:seen_ids"
CREATORS = 16
DURATION_S = 10.0
SETTLE_DEADLINE_S = 90.0
KILL_AFTER_TASKS = 300
STABLE_S = 3.0
SEND_THEN_COMMIT, COMMIT_THEN_SEND, OUTBOX = "send, then commit", "commit, then send", "scan-outbox"
METHODS = (SEND_THEN_COMMIT, COMMIT_THEN_SEND, OUTBOX)

Send = Callable[[uuid.UUID], Awaitable[None]]


def sender(broker: RedisBroker) -> Send:
    """Send the task's message from the caller, a synchronous broker call off the event loop."""

    async def send(task_id: uuid.UUID) -> None:
        payload = {"task_id": str(task_id)}
        message = build_message(uuid.uuid4(), QUEUE, keys.SCAN_ACTOR, payload)
        await asyncio.to_thread(broker.enqueue, message)

    return send


def _new_task(task_id: uuid.UUID, number: int) -> Task:
    return Task(id=task_id, user_id=1, target_domain=f"r{number}.example.com", max_attempts=3)


async def _create_one(session: AsyncSession, method: str, number: int, send: Send) -> None:
    """One create by `method`, in its own transaction."""
    task_id = uuid.uuid4()
    if method == OUTBOX:
        entry = OutboxEntry(
            uuid.uuid4(), keys.SCAN_ACTOR, QUEUE, {"task_id": str(task_id)}, task_id
        )
        new = tasks.NewTask(
            user_id=1, target_domain=f"r{number}.example.com", config={}, max_attempts=3
        )
        async with session.begin():
            await tasks.insert_task_with_message(session, task_id, new, entry)
        return
    async with session.begin():
        session.add(_new_task(task_id, number))
        await session.flush()
        if method == SEND_THEN_COMMIT:
            await send(task_id)
    if method == COMMIT_THEN_SEND:
        await send(task_id)


async def create_for(
    sessionmaker: async_sessionmaker[AsyncSession], method: str, duration_s: float, send: Send
) -> int:
    """`CREATORS` creators back to back until the deadline; how many creates were made."""
    stop_at = time.monotonic() + duration_s
    made = [0] * CREATORS

    async def creator(index: int) -> None:
        while time.monotonic() < stop_at:
            async with sessionmaker() as session:
                await _create_one(session, method, index * 1_000_000 + made[index], send)
            made[index] += 1

    await asyncio.gather(*(creator(index) for index in range(CREATORS)))
    return sum(made)


async def _settled_counts(ctx: BenchContext, created: int) -> tuple[int, int]:
    """(found, missing) once the worker has looked at every message."""
    client = ctx.redis()
    try:
        deadline = time.monotonic() + SETTLE_DEADLINE_S
        while True:
            found = int(client.get(FOUND_KEY) or 0)
            missing = int(client.get(MISSING_KEY) or 0)
            if found + missing >= created:
                return found, missing
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker saw {found + missing} of {created} messages")
            await asyncio.sleep(0.2)
    finally:
        client.close()


async def _committed_after_all(ctx: BenchContext) -> int:
    """How many of the tasks the worker missed are in the database now."""
    client = ctx.redis()
    try:
        members = client.smembers(MISSING_IDS_KEY)
        ids = [uuid.UUID(raw.decode() if isinstance(raw, bytes) else raw) for raw in members]
    finally:
        client.close()
    if not ids:
        return 0
    stmt = select(func.count()).select_from(Task).where(Task.id.in_(ids))
    async with ctx.sessionmaker() as session:
        return int((await session.execute(stmt)).scalar_one())


async def _measure(ctx: BenchContext, method: str, duration_s: float, send: Send) -> dict[str, int]:
    await ctx.reset()
    created = await create_for(ctx.sessionmaker, method, duration_s, send)
    found, missing = await _settled_counts(ctx, created)
    figures = {
        "created": created,
        "found": found,
        "missing": missing,
        "missing_then_committed": await _committed_after_all(ctx),
    }
    print(f"  {method}: {figures}", flush=True)
    return figures


async def _tasks_count(ctx: BenchContext) -> int:
    async with ctx.sessionmaker() as session:
        return int((await session.execute(select(func.count()).select_from(Task))).scalar_one())


async def _messages_seen(ctx: BenchContext, committed: int) -> int:
    """What the worker has seen once it stops changing (lost messages never arrive)."""
    client = ctx.redis()
    try:
        seen, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + SETTLE_DEADLINE_S
        while time.monotonic() < deadline:
            now_seen = int(client.get(FOUND_KEY) or 0) + int(client.get(MISSING_KEY) or 0)
            if now_seen != seen:
                seen, stable_since = now_seen, time.monotonic()
            settled = seen >= committed or time.monotonic() - stable_since > STABLE_S
            if settled and not await backlog_left(ctx.sessionmaker):
                return seen
            await asyncio.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"worker still busy after {SETTLE_DEADLINE_S} s")


async def _committed_ids(ctx: BenchContext) -> set[str]:
    async with ctx.sessionmaker() as session:
        return {str(task_id) for task_id in (await session.scalars(select(Task.id))).all()}


def _seen_ids(ctx: BenchContext) -> set[str]:
    """Ids the worker got a message for (a message from an earlier run, or a redelivery,
    adds nothing here, unlike a count)."""
    client = ctx.redis()
    try:
        members = client.smembers(SEEN_IDS_KEY)
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}
    finally:
        client.close()


async def _killed_run(ctx: BenchContext, method: str) -> int:
    """SIGKILL a creator process mid-load; committed tasks whose message never came."""
    await ctx.reset()
    command = [sys.executable, "-m", "bench.race_creator", method]
    creator = start_process(ctx, "race-creator", command, ctx.env())
    try:
        deadline = time.monotonic() + SETTLE_DEADLINE_S
        while await _tasks_count(ctx) < KILL_AFTER_TASKS:
            if creator.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"creator made no load; see {creator.log_path}")
            await asyncio.sleep(0.05)
    finally:
        creator.popen.kill()
        creator.popen.wait()
    committed = await _tasks_count(ctx)
    await _messages_seen(ctx, committed)
    lost = len(await _committed_ids(ctx) - _seen_ids(ctx))
    print(f"  {method}, creator killed: {committed} tasks committed, {lost} never dispatched")
    return lost


def _start_worker(ctx: BenchContext) -> Process:
    command = [sys.executable, "-m", "dramatiq", "bench.naive_worker", "--processes", "1"]
    command += ["--threads", "8", "--queues", QUEUE]
    # A short idle poll, so the worker is fetching when each load starts.
    return start_process(ctx, "race-worker", command, ctx.env(dramatiq_worker_timeout="100"))


def _add_rows(
    result: ScenarioResult, runs: dict[str, list[dict[str, int]]], lost: dict[str, list[int]]
) -> None:
    chart = BarChart("race: messages whose task the worker could not find", "messages", {})
    result.charts.append(chart)
    for method, figures in runs.items():
        missing = Spread.of([f["missing"] for f in figures])
        rates = Spread.of([100 * f["missing"] / max(1, f["created"]) for f in figures])
        lost_on_kill = Spread.of(lost[method]) if method in lost else None
        if method == OUTBOX:
            worst = max(missing.samples) + (max(lost_on_kill.samples) if lost_on_kill else 0)
            judged = verdict(worst, "≤", 0)
        elif method == SEND_THEN_COMMIT:
            judged = "race shown" if missing.low > 0 else "race not seen in every run"
        else:
            judged = ""
        result.rows.append(
            {
                "method": method,
                "tasks_created": Spread.of([f["created"] for f in figures]),
                "missing": missing,
                "missing_pct": rates,
                "missing_then_committed": sum(f["missing_then_committed"] for f in figures),
                "lost_when_killed": lost_on_kill or "",
                "verdict": judged,
            }
        )
        chart.bars[method] = missing


async def run(ctx: BenchContext) -> ScenarioResult:
    duration_s = max(3.0, DURATION_S * ctx.scale)
    result = ScenarioResult(
        title="race: a worker looking once for the task it was sent, per dispatch method",
        columns=[
            "method",
            "tasks_created",
            "missing",
            "missing_pct",
            "missing_then_committed",
            "lost_when_killed",
            "verdict",
        ],
        params={"creators": CREATORS, "duration_s": duration_s, "reps": ctx.reps},
    )
    broker = create_broker(ctx.settings, middleware=[], socket_timeout_s=10)
    send = sender(broker)
    worker = _start_worker(ctx)
    relay = start_relay(ctx, "race-relay")
    try:
        await _measure(ctx, COMMIT_THEN_SEND, 1.0, send)  # the worker is up and fetching
        runs: dict[str, list[dict[str, int]]] = {method: [] for method in METHODS}
        for _ in range(ctx.reps):
            for method in METHODS:
                runs[method].append(await _measure(ctx, method, duration_s, send))
        lost: dict[str, list[int]] = {COMMIT_THEN_SEND: [], OUTBOX: []}
        for _ in range(ctx.reps):
            for method in lost:
                lost[method].append(await _killed_run(ctx, method))
    finally:
        relay.stop()
        worker.stop()
        broker.client.connection_pool.disconnect()
    _add_rows(result, runs, lost)
    result.notes += [
        f"{CREATORS} creators back to back for {duration_s:g} s per run, {ctx.reps} runs per "
        "method, alternating; one Dramatiq worker process (8 threads) looking each task up "
        "once by id; one relay process (idle except for scan-outbox).",
        "missing_then_committed: tasks the worker missed that were in the database "
        "afterwards (the race itself), summed over the runs. scan-outbox must miss none.",
        "lost_when_killed: a separate creator process (`bench.race_creator`, the same "
        f"{CREATORS} creators) is SIGKILLed once {KILL_AFTER_TASKS} tasks are committed; "
        "committed tasks whose message never reached the worker, per kill. Commit-then-send "
        "loses the tasks whose process died between COMMIT and send; scan-outbox's message "
        "is committed with its task and published by the relay. Not measured for "
        "send-then-commit: its kill leaves messages for rolled-back tasks instead.",
    ]
    return result
