"""procrastinate, the PostgreSQL-native queue the benchmarks compare against, on the same server.

`app` is what the `procrastinate worker` subprocess loads: its connector takes the server from
libpq's environment (PGHOST, PGUSER…), which `start_worker` sets, so nothing is read at import.
In this process every call opens `app` with an explicit conninfo built from the bench settings.
Jobs are a no-op task on a queue of their own; procrastinate's events table dates each start.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import procrastinate
import psycopg
from psycopg import conninfo as libpq
from sqlalchemy.engine import make_url

from bench.common import START_DEADLINE_S, BenchContext, Process, start_process

QUEUE = "bench_peer"
TASK_NAME = "noop"
DEFER_BATCH = 5000
POLL_S = 0.02


async def noop() -> None:
    """Does nothing: what is measured is the queue around it."""


def build_app(connector: procrastinate.PsycopgConnector) -> procrastinate.App:
    """An app with the no-op task on `QUEUE` (one per connector: apps are not swapped)."""
    peer = procrastinate.App(connector=connector)
    peer.task(name=TASK_NAME, queue=QUEUE)(noop)
    return peer


app = build_app(procrastinate.PsycopgConnector())


def conninfo_params(ctx: BenchContext) -> dict[str, str]:
    """The bench database as libpq keywords (host may be a Unix-socket directory)."""
    url = make_url(ctx.settings.sqlalchemy_url)
    query_host = url.query.get("host")
    host = query_host if isinstance(query_host, str) else url.host
    params = {
        "host": host,
        "port": str(url.port) if url.port else None,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    return {key: value for key, value in params.items() if value}


def conninfo(ctx: BenchContext, application_name: str = "bench-procrastinate") -> str:
    return libpq.make_conninfo(**conninfo_params(ctx), application_name=application_name)


@asynccontextmanager
async def opened(ctx: BenchContext) -> AsyncIterator[procrastinate.App]:
    """`app` on the bench database, open for the block (a small pool of its own)."""
    connector = procrastinate.PsycopgConnector(conninfo=conninfo(ctx), min_size=1, max_size=2)
    async with build_app(connector).open_async() as opened_app:
        yield opened_app


async def _execute(
    ctx: BenchContext, sql: str, params: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    # Plain psycopg for the peer's own tables: they are not part of our SQLAlchemy models.
    async with await psycopg.AsyncConnection.connect(conninfo(ctx), autocommit=True) as conn:
        cursor = await conn.execute(sql.encode(), params)
        return await cursor.fetchall() if cursor.description else []


async def install(ctx: BenchContext) -> None:
    """procrastinate's schema in the bench database, applied once (a no-op when present)."""
    rows = await _execute(ctx, "SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
    if rows[0][0]:
        return
    async with opened(ctx) as opened_app:
        await opened_app.schema_manager.apply_schema_async()


async def reset(ctx: BenchContext) -> None:
    """No job, event or worker row left (the schema stays)."""
    await _execute(
        ctx,
        "TRUNCATE procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs,"
        " procrastinate_workers RESTART IDENTITY CASCADE",
    )


async def defer_noop(
    ctx: BenchContext, count: int = 1, *, opened_app: procrastinate.App | None = None
) -> list[int]:
    """Defer `count` no-op jobs (one statement per batch of `DEFER_BATCH`); their ids.

    Pass an app from `opened()` to defer many times without opening a pool each time."""
    if opened_app is None:
        async with opened(ctx) as own_app:
            return await defer_noop(ctx, count, opened_app=own_app)
    task = opened_app.tasks[TASK_NAME]
    ids: list[int] = []
    for start in range(0, count, DEFER_BATCH):
        size = min(DEFER_BATCH, count - start)
        if size == 1:
            ids.append(await task.defer_async())
        else:
            ids += await task.batch_defer_async(*({} for _ in range(size)))
    return ids


async def job_start_times(ctx: BenchContext, job_ids: Sequence[int]) -> dict[int, float]:
    """Epoch seconds at which each started job started (its 'started' event)."""
    rows = await _execute(
        ctx,
        "SELECT job_id, extract(epoch FROM at)::float8 FROM procrastinate_events"
        " WHERE type = 'started' AND job_id = ANY(%s)",
        (list(job_ids),),
    )
    return {int(job_id): float(at) for job_id, at in rows}


async def unfinished(ctx: BenchContext) -> int:
    """Jobs still to do or running."""
    rows = await _execute(
        ctx, "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
    )
    return int(rows[0][0])


async def finished_span(ctx: BenchContext) -> tuple[float, float, int]:
    """(first start, last success) as epoch seconds and the number of succeeded jobs."""
    rows = await _execute(
        ctx,
        "SELECT extract(epoch FROM min(at) FILTER (WHERE type = 'started'))::float8,"
        " extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded'))::float8,"
        " count(*) FILTER (WHERE type = 'succeeded')"
        " FROM procrastinate_events",
    )
    first, last, count = rows[0]
    if first is None or last is None:
        raise RuntimeError("no job has succeeded yet")
    return float(first), float(last), int(count)


def worker_command(name: str, concurrency: int, log_level: str = "warning") -> list[str]:
    return [
        sys.executable,
        "-m",
        "procrastinate",
        f"--app={__name__}.app",
        f"--log-level={log_level}",
        "worker",
        f"--name={name}",
        f"--queues={QUEUE}",
        f"--concurrency={concurrency}",
    ]


def launch_worker(
    ctx: BenchContext, name: str, concurrency: int, log_level: str = "warning"
) -> Process:
    """A `procrastinate worker` subprocess, returned at once (not yet ready)."""
    env = ctx.env(**_libpq_env(ctx, name), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return start_process(ctx, name, worker_command(name, concurrency, log_level), env)


async def start_worker(
    ctx: BenchContext, name: str, concurrency: int, log_level: str = "warning"
) -> Process:
    """A `procrastinate worker` subprocess, returned once it listens for jobs and has run one
    (the probe job is deleted again)."""
    process = launch_worker(ctx, name, concurrency, log_level)
    try:
        await wait_listening(ctx, process)
        await _round_trip(ctx, process)
    except BaseException:
        process.stop()
        raise
    return process


async def wait_listening(ctx: BenchContext, process: Process) -> None:
    """Until the worker's LISTEN connection is up: jobs deferred after this wake it at once."""
    query = (
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity"
        " WHERE application_name = %s AND query ILIKE 'LISTEN%%')"
    )
    deadline = time.monotonic() + START_DEADLINE_S
    while not (await _execute(ctx, query, (process.name,)))[0][0]:
        _check_alive(process, deadline)
        await asyncio.sleep(POLL_S)


async def _round_trip(ctx: BenchContext, process: Process) -> None:
    (job_id,) = await defer_noop(ctx)
    status = "SELECT status::text FROM procrastinate_jobs WHERE id = %s"
    deadline = time.monotonic() + START_DEADLINE_S
    while (await _execute(ctx, status, (job_id,)))[0][0] != "succeeded":
        _check_alive(process, deadline)
        await asyncio.sleep(POLL_S)
    await _execute(ctx, "DELETE FROM procrastinate_jobs WHERE id = %s", (job_id,))


def _check_alive(process: Process, deadline: float) -> None:
    if process.popen.poll() is not None:
        raise RuntimeError(f"{process.name} exited; see {process.log_path}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"{process.name} did not get ready; see {process.log_path}")


def _libpq_env(ctx: BenchContext, name: str) -> dict[str, str]:
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}
    env = {names[key]: value for key, value in conninfo_params(ctx).items() if key in names}
    env["PGDATABASE"] = conninfo_params(ctx).get("dbname", "postgres")
    env["PGAPPNAME"] = name
    return env
