"""`python -m bench.schedule_firing [--schedules N] [--relays R] [--idle N]`: what firing costs.

Starts its own embedded PostgreSQL and Redis and R real relay processes (default settings),
then measures:

- lateness: N schedules (one domain each) all due at the same whole minute; each run's
  `fired_at - tick_at`, p50/p99/max, and when the last of them committed;
- the cost of an idle schedule: with N schedules not due for an hour, the statements and rows
  the relays spend on the `schedules` table per minute (pg_stat_user_tables), against none;
- one claim's transaction (in this process, relays stopped): `SCAN_SCHEDULE_FIRE_BATCH_SIZE`
  schedules of `--domains` domains each, the time each claim takes.

Prints one JSON object. The machine is whatever runs it: quote figures with the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from relay_service import firing
from scanctl.processes import relay_command
from shared import safeguards
from shared.db import migrate
from shared.db.engine import create_engine, create_sessionmaker
from shared.embedded import embedded_servers
from shared.settings import Settings

USER_SQL = (
    "INSERT INTO users (id, name, token_hash) VALUES (1, 'bench', 'x') ON CONFLICT DO NOTHING"
)
SCHEDULES_SQL = """
INSERT INTO schedules (id, user_id, cron, timezone, anchor_at, domains, config, next_fire_at)
SELECT gen_random_uuid(), 1, '* * * * *', 'UTC', now(), ARRAY['d' || n || '.example.com'],
       '{"keywords": [], "regexes": []}'::jsonb, CAST(:due AS timestamptz)
FROM generate_series(1, :n) AS n
"""
WIDE_SCHEDULES_SQL = """
INSERT INTO schedules (id, user_id, cron, timezone, anchor_at, domains, config, next_fire_at)
SELECT gen_random_uuid(), 1, '* * * * *', 'UTC', now(),
       ARRAY(SELECT 'd' || n || '-' || k || '.example.com' FROM generate_series(1, :domains) k),
       '{"keywords": [], "regexes": []}'::jsonb, statement_timestamp()
FROM generate_series(1, :n) AS n
"""
STATS_SQL = """
SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) AS scans,
       coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) AS rows
FROM pg_stat_user_tables WHERE relname = 'schedules'
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_relays(count: int, database_url: str, redis_url: str, log_dir: Path) -> list[Any]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SCAN_RELAY_HEALTH_PORT": "0",
        "SCAN_LOG_JSON": "true",
        "SCAN_RATE_LIMIT_PER_MINUTE": "0",
    }
    processes = []
    for index in range(count):
        log = (log_dir / f"relay{index}.log").open("wb")
        processes.append(
            subprocess.Popen(relay_command(), env=env, stdout=log, stderr=subprocess.STDOUT)
        )
    return processes


async def lateness(settings: Settings, schedules: int) -> dict[str, Any]:
    engine = create_engine(settings)
    try:
        now = datetime.now(UTC)
        due = (now + timedelta(seconds=75)).replace(second=0, microsecond=0)
        async with engine.begin() as connection:
            await connection.execute(text(SCHEDULES_SQL), {"due": due, "n": schedules})
        while True:
            await asyncio.sleep(1)
            async with engine.connect() as connection:
                fired = (
                    await connection.execute(
                        text("SELECT count(*) FROM schedule_runs WHERE tick_at = :due"),
                        {"due": due},
                    )
                ).scalar_one()
            if fired >= schedules:
                break
            if datetime.now(UTC) > due + timedelta(minutes=3):
                raise RuntimeError(f"only {fired} of {schedules} schedules fired")
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text(
                        "SELECT extract(epoch FROM fired_at - tick_at) FROM schedule_runs"
                        " WHERE tick_at = :due"
                    ),
                    {"due": due},
                )
            ).scalars()
            late = [float(value) for value in rows]
            await connection.execute(text("DELETE FROM schedules"))
            await connection.commit()
    finally:
        await engine.dispose()
    return {
        "schedules": schedules,
        "lateness_p50_s": round(statistics.median(late), 3),
        "lateness_p99_s": round(percentile(late, 0.99), 3),
        "lateness_max_s": round(max(late), 3),
    }


async def idle_cost(settings: Settings, idle: int, window_s: float) -> dict[str, Any]:
    engine = create_engine(settings)

    async def sample() -> tuple[int, int]:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT pg_stat_clear_snapshot()"))
            row = (await connection.execute(text(STATS_SQL))).one()
            return int(row.scans), int(row.rows)

    async def per_minute() -> tuple[float, float]:
        await asyncio.sleep(2)  # the statistics collector's flush
        scans0, rows0 = await sample()
        await asyncio.sleep(window_s)
        scans1, rows1 = await sample()
        factor = 60 / window_s
        return (scans1 - scans0) * factor, (rows1 - rows0) * factor

    try:
        async with engine.begin() as connection:
            await connection.execute(text(USER_SQL))
        none_scans, none_rows = await per_minute()
        later = datetime.now(UTC) + timedelta(hours=1)
        async with engine.begin() as connection:
            await connection.execute(text(SCHEDULES_SQL), {"due": later, "n": idle})
            await connection.execute(text("ANALYZE schedules"))
        idle_scans, idle_rows = await per_minute()
    finally:
        await engine.dispose()
    return {
        "idle_schedules": idle,
        "schedule_table_scans_per_min_with_none": round(none_scans, 1),
        "schedule_table_scans_per_min_with_idle": round(idle_scans, 1),
        "schedule_rows_read_per_min_with_none": round(none_rows, 1),
        "schedule_rows_read_per_min_with_idle": round(idle_rows, 1),
        "scans_per_idle_schedule_per_min": round((idle_scans - none_scans) / idle, 4),
    }


async def claim_cost(settings: Settings, domains: int, claims: int) -> dict[str, Any]:
    engine = create_engine(settings)
    size = settings.schedule_fire_batch_size
    redis = safeguards.create_redis(settings)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM schedules"))
            params = {"n": size * claims, "domains": domains}
            await connection.execute(text(WIDE_SCHEDULES_SQL), params)
        sessionmaker = create_sessionmaker(engine)
        took: list[float] = []
        for _ in range(claims):
            started = time.perf_counter()
            await firing.fire_due(sessionmaker, redis, settings)
            took.append(time.perf_counter() - started)
    finally:
        await redis.aclose()
        await engine.dispose()
    return {
        "claim_schedules": size,
        "claim_domains_each": domains,
        "claim_s_median": round(statistics.median(took), 2),
        "claim_s_max": round(max(took), 2),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.schedule_firing")
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--relays", type=int, default=2)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--domains", type=int, default=100, help="domains of each claimed schedule")
    parser.add_argument("--claims", type=int, default=4)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="bench-schedules-") as tmp,
        embedded_servers(Path(tmp) / "servers", delete=True) as urls,
    ):
        migrate.upgrade(urls.database_url)
        settings = Settings(
            database_url=urls.database_url,  # type: ignore[arg-type]
            redis_url=urls.redis_url,  # type: ignore[arg-type]
        )
        relays = start_relays(args.relays, urls.database_url, urls.redis_url, Path(tmp))
        try:
            time.sleep(3)
            report = {"relays": args.relays, "run_id": str(uuid.uuid4())[:8]}
            report |= asyncio.run(idle_cost(settings, args.idle, args.window_s))
            report |= asyncio.run(lateness(settings, args.schedules))
        finally:
            for process in relays:
                process.terminate()
            for process in relays:
                process.wait(timeout=30)
        no_limit = settings.model_copy(update={"rate_limit_per_minute": 0})
        report |= asyncio.run(claim_cost(no_limit, args.domains, args.claims))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
