"""commit_ceiling: what the wake-ups cost the server's commit rate, and the pipeline's pace.

PostgreSQL commits every transaction that called `pg_notify` under one lock held through
its WAL flush, so notifying commits cannot share a flush (group commit stops). Two parts,
each against the same transactions with no wake-up at all (the floor of the schema):

- statements: 64 asyncpg connections in this process, each committing the create
  statement (task + outbox row) and then the final write ending that task, as fast as
  they can, for `SQL_DURATION_S`. Wake-ups: none (floor); the NOTIFY triggers the schema
  had before revision 0008 (a listener attached); a Redis hint published after each
  commit (the design); a `pg_notify` in its own transaction after each commit.
- pipeline: the real processes, two API processes (64 clients in two `bench.loadgen`
  processes, single creates), one relay, one worker (no-op scans), for
  `PIPELINE_DURATION_S`: creates answered, tasks finished and server commits per second,
  with hints on (the design), with no wake-up at all (every loop polls: the floor) and
  with the old NOTIFY triggers reinstalled (hints off).

Runs alternate between wake-ups, so drift on the shared machine hits each alike.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
from sqlalchemy import text

from bench.common import (
    BarChart,
    BenchContext,
    Process,
    ScenarioResult,
    Spread,
    start_relay,
    start_worker,
    verdict,
)
from bench.create_throughput import fresh_token, start_api
from shared import wakeups

CLIENTS = 64
SQL_DURATION_S = 5.0
PIPELINE_DURATION_S = 15.0
TARGET_RATIO = 0.8
NONE, NOTIFY, HINT, NOTIFY_AFTER = (
    "no wake-up (floor)",
    "NOTIFY triggers in the transaction (before 0008)",
    "Redis hint after commit (scan-outbox)",
    "pg_notify in its own transaction after commit",
)
MIGRATION = (
    Path(__file__).parent.parent / "shared/db/migrations/versions/0008_wakeups_after_commit.py"
)

_CREATE = """
WITH t AS (
    INSERT INTO tasks (id, user_id, target_domain, status, started_at)
    VALUES ($1, $2, $3, 'running', now())
    RETURNING id, user_id
)
INSERT INTO outbox (message_id, actor, queue, payload, task_id, user_id, lane)
SELECT gen_random_uuid(), 'scan_domain', 'scans', jsonb_build_object('task_id', id::text),
       id, user_id, 1
FROM t
"""
_FINISH = (
    "UPDATE tasks SET status = 'succeeded', finished_at = now(), updated_at = now() "
    "WHERE id = $1 AND status = 'running'"
)


def _migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wakeups_migration", MIGRATION)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {MIGRATION}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _set_triggers(ctx: BenchContext, notifying: bool) -> None:
    """The NOTIFY triggers of the schema before revision 0008, or the schema as it is."""
    migration = _migration()
    statements = (
        [
            migration.CALLBACKS_FUNCTION_NOTIFYING,
            migration.FINISH_NOTIFY_FUNCTION,
            migration.FINISH_NOTIFY_TRIGGER,
            migration.OUTBOX_NOTIFY_FUNCTION,
            migration.OUTBOX_NOTIFY_TRIGGER,
        ]
        if notifying
        else [
            "DROP TRIGGER IF EXISTS outbox_notify ON outbox",
            "DROP FUNCTION IF EXISTS outbox_notify()",
            "DROP TRIGGER IF EXISTS task_finished_notify ON tasks",
            "DROP FUNCTION IF EXISTS task_finished_notify()",
            migration.CALLBACKS_FUNCTION,
        ]
    )
    async with ctx.engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement))


async def _listening(ctx: BenchContext) -> asyncpg.Connection:
    """A connection listening on the old channels, as the relays and APIs did."""
    connection = await asyncpg.connect(ctx.settings.asyncpg_dsn)
    for channel in ("scan_outbox", "scan_task_finished", "scan_callbacks"):
        await connection.add_listener(channel, lambda *_: None)
    return connection


async def _user_id(ctx: BenchContext) -> int:
    await fresh_token(ctx)
    async with ctx.engine.connect() as connection:
        return int((await connection.execute(text("SELECT min(id) FROM users"))).scalar_one())


async def _statements(ctx: BenchContext, wakeup: str) -> float:
    """Transactions per second: `CLIENTS` connections creating and ending tasks."""
    user_id = await _user_id(ctx)
    await _set_triggers(ctx, notifying=wakeup == NOTIFY)
    hints = wakeups.Hints(wakeups.create_client(ctx.settings) if wakeup == HINT else None)
    listener = await _listening(ctx)
    pool = await asyncpg.create_pool(ctx.settings.asyncpg_dsn, min_size=CLIENTS, max_size=CLIENTS)
    committed = 0
    stop_at = time.monotonic() + SQL_DURATION_S * max(0.2, ctx.scale)

    async def after_commit(connection: asyncpg.Connection, channel: str) -> None:
        if wakeup == HINT:
            await hints.outbox()
        elif wakeup == NOTIFY_AFTER:
            await connection.execute(f"SELECT pg_notify('{channel}', '')")

    async def client(number: int) -> None:
        nonlocal committed
        async with pool.acquire() as connection:
            while time.monotonic() < stop_at:
                task_id = uuid.uuid4()
                await connection.execute(_CREATE, task_id, user_id, f"c{number}.example.com")
                await after_commit(connection, "scan_outbox")
                await connection.execute(_FINISH, task_id)
                await after_commit(connection, "scan_task_finished")
                committed += 2

    started = time.monotonic()
    try:
        await asyncio.gather(*(client(number) for number in range(CLIENTS)))
    finally:
        elapsed_s = time.monotonic() - started
        await pool.close()
        await listener.close()
        await hints.aclose()
        await _set_triggers(ctx, notifying=False)
    rate = committed / elapsed_s
    print(f"  statements, {wakeup}: {rate:,.0f} commits/s", flush=True)
    return rate


async def _count(ctx: BenchContext, sql: str) -> int:
    async with ctx.engine.connect() as connection:
        await connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int((await connection.execute(text(sql))).scalar_one())


_COMMITS = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
_FINISHED = "SELECT count(*) FROM tasks WHERE finished_at IS NOT NULL"


async def _loads(ports: list[int], token: str, duration_s: float) -> list[dict[str, Any]]:
    """One `bench.loadgen` per API port, `CLIENTS` clients between them."""
    per_api = CLIENTS // len(ports)
    loads = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.loadgen",
            "--port",
            str(port),
            "--path",
            "/api/v1/tasks",
            "--token",
            token,
            "--concurrency",
            str(per_api),
            "--duration-s",
            str(duration_s),
            "--worker",
            str(n),
            stdout=asyncio.subprocess.PIPE,
        )
        for n, port in enumerate(ports)
    ]
    outputs = await asyncio.gather(*(load.communicate() for load in loads))
    return [json.loads(out.decode()) for out, _ in outputs]


async def _pipeline(ctx: BenchContext, wakeup: str) -> dict[str, float]:
    """Creates, finishes and commits per second through the real processes."""
    hints_on = wakeup == HINT
    env = {"SCAN_WAKEUP_HINTS": "true" if hints_on else "false"}
    token = await fresh_token(ctx)
    await _set_triggers(ctx, notifying=wakeup == NOTIFY)
    listener = await _listening(ctx)
    processes: list[Process] = []
    try:
        ports = []
        for n in range(2):
            api, port = start_api(ctx, f"ceiling-api-{n}", **env)
            processes.append(api)
            ports.append(port)
        processes.append(start_relay(ctx, "ceiling-relay", **env))
        processes.append(start_worker(ctx, "ceiling-worker", None, **env))
        await _loads(ports, token, 2.0)  # warm-up, not counted
        duration_s = max(3.0, PIPELINE_DURATION_S * ctx.scale)
        commits_before, finished_before = await _count(ctx, _COMMITS), await _count(ctx, _FINISHED)
        started = time.monotonic()
        figures = await _loads(ports, token, duration_s)
        elapsed_s = time.monotonic() - started
        commits = await _count(ctx, _COMMITS) - commits_before
        finished = await _count(ctx, _FINISHED) - finished_before
    finally:
        for process in processes:
            process.stop()
        await listener.close()
        await _set_triggers(ctx, notifying=False)
    row = {
        "creates_per_s": sum(int(f["ok"]) for f in figures) / elapsed_s,
        "finished_per_s": finished / elapsed_s,
        "commits_per_s": commits / elapsed_s,
    }
    print(f"  pipeline, {wakeup}: {row}", flush=True)
    return row


async def _alternate(
    ctx: BenchContext, wakeups_: list[str], measure: Callable[[str], Awaitable[Any]]
) -> dict[str, list[Any]]:
    runs: dict[str, list[Any]] = {wakeup: [] for wakeup in wakeups_}
    for _ in range(ctx.reps):
        for wakeup in wakeups_:
            runs[wakeup].append(await measure(wakeup))
    return runs


def _ratios(values: list[float], floor: list[float]) -> Spread:
    # Runs alternate, so the i-th run of a wake-up is paired with the i-th floor run.
    return Spread.of([value / base for value, base in zip(values, floor, strict=True)])


async def run(ctx: BenchContext) -> ScenarioResult:
    result = ScenarioResult(
        title="commit_ceiling: commits with each kind of wake-up against none, at 64 clients",
        label_columns=["part", "wakeup"],
        columns=[
            "part",
            "wakeup",
            "commits_per_s",
            "creates_per_s",
            "finished_per_s",
            "x_floor",
            "verdict",
        ],
        params={"clients": CLIENTS, "reps": ctx.reps},
    )
    chart = BarChart("commit_ceiling: commits per second at 64 clients", "commits/s", {})
    result.charts.append(chart)
    sql_modes = [NONE, NOTIFY, HINT, NOTIFY_AFTER]
    sql = await _alternate(ctx, sql_modes, lambda wakeup: _statements(ctx, wakeup))
    for wakeup in sql_modes:
        ratio = _ratios(sql[wakeup], sql[NONE])
        result.rows.append(
            {
                "part": "statements",
                "wakeup": wakeup,
                "commits_per_s": Spread.of(sql[wakeup]),
                "creates_per_s": "",
                "finished_per_s": "",
                "x_floor": ratio,
                "verdict": verdict(ratio.median, "≥", TARGET_RATIO) if wakeup == HINT else "",
            }
        )
        chart.bars[f"statements, {wakeup}"] = Spread.of(sql[wakeup])
    pipe_modes = [NONE, HINT, NOTIFY]
    pipe = await _alternate(ctx, pipe_modes, lambda wakeup: _pipeline(ctx, wakeup))
    for wakeup in pipe_modes:
        rows = pipe[wakeup]
        creates = [r["creates_per_s"] for r in rows]
        ratio = _ratios(creates, [r["creates_per_s"] for r in pipe[NONE]])
        result.rows.append(
            {
                "part": "pipeline",
                "wakeup": wakeup,
                "commits_per_s": Spread.of([r["commits_per_s"] for r in rows]),
                "creates_per_s": Spread.of(creates),
                "finished_per_s": Spread.of([r["finished_per_s"] for r in rows]),
                "x_floor": ratio,
                "verdict": verdict(ratio.median, "≥", TARGET_RATIO) if wakeup == HINT else "",
            }
        )
    result.notes += [
        f"statements: {CLIENTS} asyncpg connections, each committing the create statement "
        "(task + outbox row) then the final write ending that task, one transaction each, "
        f"{SQL_DURATION_S * max(0.2, ctx.scale):g} s a run; x_floor against the same "
        "statements with no wake-up. A connection LISTENs on the old channels in every run.",
        "pipeline: two API processes (64 clients in two bench.loadgen processes, single "
        "creates), one relay, one worker process (no-op scans), "
        f"{max(3.0, PIPELINE_DURATION_S * ctx.scale):g} s a run after a 2 s warm-up; the "
        "floor runs every process with SCAN_WAKEUP_HINTS=false and no trigger (every loop "
        "polls); the NOTIFY row reinstalls the triggers of revision 0006 with hints off. "
        "x_floor: creates answered against the floor's. finished_per_s is the whole "
        "pipeline's sustained single-create → finished rate.",
        "Target: the design's wake-up keeps ≥ "
        f"{TARGET_RATIO:g} of the floor's commits (statements) and creates (pipeline).",
        "PostgreSQL, Redis, the services and the load share this machine's 2 CPUs (and, "
        "during development runs, other sessions' work).",
    ]
    return result
