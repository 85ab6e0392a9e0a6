"""`python -m bench [SCENARIO ...] [--scale F] [--reps N]`: run benchmark scenarios.

Starts its own embedded PostgreSQL and Redis, runs the scenarios in order on
those servers and merges their tables into `bench/results/<date>.json` and
`<date>.md`, with their charts as `<date>-<scenario>-<n>.png` beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text

from bench.charts import render_charts
from bench.common import BenchContext, ScenarioResult
from bench.readme import README, update_readme
from bench.report import environment, render_markdown, to_json
from shared.db import migrate
from shared.db.engine import create_engine, create_sessionmaker
from shared.embedded import embedded_servers
from shared.logging import configure_logging
from shared.settings import Settings
from tests.pgbouncer import pgbouncer, pooled_env

# name -> module; each module has `async def run(ctx: BenchContext) -> ScenarioResult`.
SCENARIOS = {
    "create_throughput": "bench.create_throughput",
    "batch_create": "bench.batch_create",
    "wait_wakeup": "bench.wait_wakeup",
    "callback_delivery": "bench.callback_delivery",
    "callback_latency": "bench.callback_latency",
    "dispatch_latency": "bench.dispatch_latency",
    "e2e_drain": "bench.e2e_drain",
    "relay_drain": "bench.relay_drain",
    "claim_cost": "bench.claim_cost",
    "race": "bench.race",
    "recovery": "bench.recovery",
    "io_bound": "bench.io_bound",
    "fairness": "bench.fairness",
    "batch_export": "bench.batch_export",
    "commit_ceiling": "bench.commit_ceiling",
}
RESULTS_DIR = Path(__file__).parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply row counts and durations (e.g. 0.1)"
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="repetitions behind each figure (3 or more)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="the services reach PostgreSQL through PgBouncer in transaction mode (Debian's "
        "pgbouncer on PATH), their sessions directly",
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        type=Path,
        help="run nothing: write the Markdown report (and README block) again from a JSON report",
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="also put the targets table and charts in README.md (what `make bench` does)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


async def run_scenarios(
    names: list[str],
    settings: Settings,
    args: argparse.Namespace,
    work_dir: Path,
    on_result: Callable[[str, ScenarioResult], None],
    service_env: dict[str, str],
) -> list[str]:
    """Run each scenario, handing each result to `on_result` as it ends; the names of those
    that failed (the others still run: one broken scenario must not cost a long run)."""
    engine = create_engine(settings)
    ctx = BenchContext(
        settings,
        engine,
        create_sessionmaker(engine),
        args.scale,
        work_dir,
        reps=args.reps,
        service_env=service_env,
    )
    failed: list[str] = []
    try:
        for name in names:
            module = importlib.import_module(SCENARIOS[name])
            print(f"running {name} (scale {ctx.scale:g}, {ctx.reps} reps)…", flush=True)
            # Other work on the machine skews the figures: keep the load next to them.
            load_before = round(os.getloadavg()[0], 2)
            started = time.monotonic()
            try:
                result: ScenarioResult = await module.run(ctx)
            except Exception:
                traceback.print_exc()
                print(f"  {name} FAILED; logs in {work_dir}", flush=True)
                failed.append(name)
                continue
            elapsed_s = round(time.monotonic() - started, 1)
            print(f"  done in {elapsed_s} s", flush=True)
            result.params.update(
                scale=ctx.scale,
                reps=ctx.reps,
                elapsed_s=elapsed_s,
                load_1m=[load_before, round(os.getloadavg()[0], 2)],
            )
            on_result(name, result)
    finally:
        await engine.dispose()
    return failed


async def server_versions(settings: Settings) -> dict[str, str]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            postgres = (await connection.execute(text("SHOW server_version"))).scalar_one()
    finally:
        await engine.dispose()
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        redis_version = str(client.info("server")["redis_version"])
    finally:
        client.close()
    return {"postgresql": str(postgres), "redis": redis_version}


def write_report(
    out_dir: Path, scenarios: dict[str, ScenarioResult], versions: dict[str, str]
) -> Path:
    """Merge into today's report (a subset run keeps the other scenarios' last figures);
    the JSON report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.now(UTC).date().isoformat()
    json_path = out_dir / f"{date}.json"
    report: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {}
    report.update(date=date, machine=environment(versions))
    for name, result in scenarios.items():
        scenario = to_json(result)
        scenario["chart_files"] = [
            path.name for path in render_charts(out_dir, f"{date}-{name}", result.charts)
        ]
        report.setdefault("scenarios", {})[name] = scenario
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / f"{date}.md").write_text(render_markdown(report))
    return json_path


def _keep_writing(
    args: argparse.Namespace, versions: dict[str, str]
) -> Callable[[str, ScenarioResult], None]:
    """Write each scenario's figures the moment it ends, so a later failure keeps them."""

    def write(name: str, result: ScenarioResult) -> None:
        path = write_report(args.out, {name: result}, versions)
        print(f"  wrote {path} and {path.with_suffix('.md')}", flush=True)
        if args.readme:
            report = json.loads(path.read_text())
            update_readme(README, report, args.out)

    return write


def render_again(json_path: Path, readme: bool) -> int:
    if not json_path.is_file():
        print(f"Error: no JSON report at {json_path}", file=sys.stderr)
        return 2
    report = json.loads(json_path.read_text())
    json_path.with_suffix(".md").write_text(render_markdown(report))
    if readme:
        update_readme(README, report, json_path.parent)
    print(f"wrote {json_path.with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render:
        return render_again(args.render, args.readme)
    names = args.scenarios or list(SCENARIOS)
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="scan-outbox-bench-") as tmp:
        work_dir = Path(tmp)
        with embedded_servers(work_dir / "servers", delete=True) as urls:
            migrate.upgrade(urls.database_url)
            settings = Settings(
                database_url=urls.database_url,  # type: ignore[arg-type]
                redis_url=urls.redis_url,  # type: ignore[arg-type]
                _env_file=None,  # type: ignore[call-arg]
            )
            versions = asyncio.run(server_versions(settings))
            print("environment:", json.dumps(environment(versions)), flush=True)
            on_result = _keep_writing(args, versions)
            with contextlib.ExitStack() as stack:
                service_env = {}
                if args.pgbouncer:
                    bouncer = stack.enter_context(pgbouncer(urls.database_url, work_dir / "pgb"))
                    service_env = pooled_env(bouncer, urls.database_url)
                    print(f"services through PgBouncer (transaction mode) at {bouncer.url}")
                failed = asyncio.run(
                    run_scenarios(names, settings, args, work_dir, on_result, service_env)
                )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
