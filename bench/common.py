"""What every benchmark scenario shares: servers, a clean slate, bulk rows, processes, stats."""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bench import stub_scanner
from scanctl.processes import relay_command, worker_command
from shared.embedded import free_port
from shared.settings import Settings

START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 30.0


@dataclass(frozen=True)
class Spread:
    """A figure measured several times: its median (what ratios use), min and max."""

    median: float
    low: float
    high: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        if not samples:
            raise ValueError("a spread needs at least one sample")
        return cls(statistics.median(samples), min(samples), max(samples), tuple(samples))

    def as_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "samples": self.samples}


@dataclass(frozen=True)
class BarChart:
    """Throughput-style bars: one bar per label, whiskers from min to max."""

    title: str
    unit: str
    bars: dict[str, Spread]


@dataclass(frozen=True)
class DistributionChart:
    """Latency-style distributions: every raw sample per label (drawn as box plots)."""

    title: str
    unit: str
    series: dict[str, Sequence[float]]
    log_scale: bool = False


Chart = BarChart | DistributionChart


@dataclass
class ScenarioResult:
    """One scenario's table (rows of the same keys, in `columns` order), notes and charts.

    A cell may hold a `Spread` (rendered "median (min-max)"); a scenario with a
    target adds a `verdict` cell from `verdict()` to the rows it judges.
    """

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    charts: list[Chart] = field(default_factory=list)
    # The columns that name a row in the report's targets table (the first one if empty).
    label_columns: list[str] = field(default_factory=list)


def verdict(value: float, target: str, threshold: float) -> str:
    """'meets ≥ 0.9' or 'MISSES ≥ 0.9': a missed target stays visible in the table."""
    if target not in ("≥", "≤"):
        raise ValueError(f"unknown comparison {target!r}")
    met = value >= threshold if target == "≥" else value <= threshold
    return f"{'meets' if met else 'MISSES'} {target} {threshold:g}"


async def repeat(times: int, measure: Callable[[], Awaitable[float]]) -> Spread:
    """Run `measure` `times` times (each from its own clean state) and keep the spread."""
    return Spread.of([await measure() for _ in range(times)])


@dataclass
class BenchContext:
    """Servers and settings for one run; every scenario starts from `reset()`."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    scale: float
    work_dir: Path
    reps: int = 3
    # Overrides for the service processes' environment (`--pgbouncer`: their database URLs).
    service_env: dict[str, str] = field(default_factory=dict)

    def scaled(self, count: int, minimum: int = 1000) -> int:
        return max(minimum, int(count * self.scale))

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.effective_broker_url)

    async def reset(self) -> None:
        """Empty tables (one user left for tasks to belong to) and an empty Redis.

        The remembered broker epoch goes with the Redis it names: kept, the next relay would
        take the empty Redis for a broker that lost its data and send every queued task again.
        """
        async with self.engine.begin() as connection:
            await connection.execute(
                text("TRUNCATE outbox, tasks, users, broker_state RESTART IDENTITY CASCADE")
            )
            await connection.execute(
                text("INSERT INTO users (name, token_hash) VALUES ('bench', 'bench')")
            )
        client = self.redis()
        client.flushdb()
        client.close()

    async def vacuum(self, *, analyze: bool = True, tables: str = "outbox") -> None:
        # VACUUM cannot run inside a transaction block.
        async with self.engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            verb = "VACUUM ANALYZE" if analyze else "VACUUM"
            await autocommit.execute(text(f"{verb} {tables}"))

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a service process on these servers."""
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.settings.database_url.get_secret_value(),
            REDIS_URL=self.settings.redis_url.get_secret_value(),
            SCAN_LOG_JSON="true",
            SCAN_WORKER_METRICS_PORT="0",
        )
        env.update(self.service_env)
        env.update(extra)
        return env


# Tasks and their outbox rows straight from SQL: a backlog (or a history of
# finished tasks and published rows) of any size in seconds, in the first user's
# interactive lane (one client's window, as the API writes single creates).
_FILL_TASKS_SQL = text(
    """
    WITH new_tasks AS (
        INSERT INTO tasks (id, user_id, target_domain, status)
        SELECT gen_random_uuid(), (SELECT min(id) FROM users), 'b' || g || '.example.com',
               CASE WHEN :done THEN 'succeeded' ELSE 'pending' END
        FROM generate_series(1, :count) g
        RETURNING id, user_id
    )
    INSERT INTO outbox (message_id, actor, queue, payload, task_id, user_id, published_at)
    SELECT gen_random_uuid(), 'scan_domain', :queue, jsonb_build_object('task_id', id::text), id,
           user_id, CASE WHEN :done THEN now() END
    FROM new_tasks
    """
)

_FILL_BARE_SQL = text(
    """
    INSERT INTO outbox (message_id, actor, queue, payload, published_at)
    SELECT gen_random_uuid(), 'scan_domain', :queue, jsonb_build_object('task_id', g::text),
           CASE WHEN :published THEN now() END
    FROM generate_series(1, :count) g
    """
)


async def fill_tasks(session: AsyncSession, count: int, queue: str, *, done: bool = False) -> None:
    """`count` pending tasks with their outbox rows, in the caller's transaction (`done`:
    succeeded tasks with published rows instead)."""
    await session.execute(_FILL_TASKS_SQL, {"count": count, "queue": queue, "done": done})


async def fill_outbox(
    sessionmaker: async_sessionmaker[AsyncSession], count: int, *, published: bool, queue: str
) -> None:
    """`count` outbox rows without tasks, committed."""
    async with sessionmaker() as session, session.begin():
        params = {"count": count, "queue": queue, "published": published}
        await session.execute(_FILL_BARE_SQL, params)


async def backlog_left(sessionmaker: async_sessionmaker[AsyncSession]) -> bool:
    # EXISTS stops at the first unpublished row: cheap enough to poll while relays work.
    stmt = text(
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL AND dead_at IS NULL)"
    )
    async with sessionmaker() as session:
        return bool((await session.execute(stmt)).scalar_one())


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    health_port: int | None = None

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def kill(self) -> int:
        """SIGKILL to the process and everything it started (its own session): no shutdown
        code runs, as when its node dies."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.wait()


def start_process(ctx: BenchContext, name: str, command: list[str], env: dict[str, str]) -> Process:
    log_path = ctx.work_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        popen = subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Process(name, popen, log_path)


def start_relay(ctx: BenchContext, name: str, **extra_env: str) -> Process:
    """A relay process, returned once its liveness probe answers."""
    port = free_port()
    env = ctx.env(SCAN_RELAY_HEALTH_PORT=str(port), **extra_env)
    process = start_process(ctx, name, relay_command(), env)
    process.health_port = port
    return wait_live(process, port)


def wait_live(process: Process, port: int) -> Process:
    """`process` once `/livez` on `port` answers 200; stopped, and an error, if it never does."""
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited; see {process.log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    process.stop()
    raise RuntimeError(f"{process.name} did not start; see {process.log_path}")


def start_worker(
    ctx: BenchContext, name: str, concurrency: int | None = None, **extra_env: str
) -> Process:
    """A worker (1 process; `concurrency` scans in flight, None for the default) whose scans
    are the no-op stub unless `extra_env` names another: benchmarks measure the pipeline,
    not the network."""
    env = ctx.env(**{"SCAN_SCANNER": stub_scanner.SCANNER_PATH, **extra_env})
    return start_process(ctx, name, worker_command(processes=1, concurrency=concurrency), env)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
