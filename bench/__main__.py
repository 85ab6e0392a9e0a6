"""`python -m bench [SCENARIO ...] [--scale F]`: run benchmark scenarios, write bench/results/.

Starts its own embedded PostgreSQL and Redis, runs the scenarios in order and
merges their tables into `bench/results/<date>.json` and `<date>.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import BenchContext, ScenarioResult
from shared.db import migrate
from shared.db.engine import create_engine, create_sessionmaker
from shared.embedded import embedded_servers
from shared.logging import configure_logging
from shared.settings import Settings

# name -> module; each module has `async def run(ctx: BenchContext) -> ScenarioResult`.
SCENARIOS = {
    "relay_drain": "bench.relay_drain",
    "claim_cost": "bench.claim_cost",
    "dispatch_latency": "bench.dispatch_latency",
}
RESULTS_DIR = Path(__file__).parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply row counts and durations (e.g. 0.1)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    return args


async def run_scenarios(
    names: list[str], settings: Settings, scale: float, work_dir: Path
) -> dict[str, dict[str, Any]]:
    engine = create_engine(settings)
    ctx = BenchContext(settings, engine, create_sessionmaker(engine), scale, work_dir)
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            module = importlib.import_module(SCENARIOS[name])
            print(f"running {name} (scale {scale:g})…", flush=True)
            # Other work on the machine skews the figures: keep the load next to them.
            load_before = round(os.getloadavg()[0], 2)
            started = time.monotonic()
            result: ScenarioResult = await module.run(ctx)
            elapsed_s = round(time.monotonic() - started, 1)
            print(f"  done in {elapsed_s} s", flush=True)
            results[name] = {
                **vars(result),
                "scale": scale,
                "elapsed_s": elapsed_s,
                "load_1m": [load_before, round(os.getloadavg()[0], 2)],
            }
    finally:
        await engine.dispose()
    return results


async def server_versions(settings: Settings) -> dict[str, str]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            postgres = (await connection.execute(text("SHOW server_version"))).scalar_one()
    finally:
        await engine.dispose()
    return {"postgresql": str(postgres)}


def render_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"# Benchmarks {report['date']}",
        "",
        f"{machine['cpus']} CPUs, Python {machine['python']}, PostgreSQL {machine['postgresql']}"
        " and Redis embedded, all on this one machine. `python -m bench` wrote this file.",
    ]
    for name, scenario in report["scenarios"].items():
        lines += ["", f"## {scenario['title']}", ""]
        load = scenario.get("load_1m", ["?", "?"])
        lines.append(
            f"`{name}`, scale {scenario['scale']:g}, {scenario['elapsed_s']} s; "
            f"1-minute load average {load[0]} before, {load[1]} after."
        )
        lines += ["", "| " + " | ".join(scenario["columns"]) + " |"]
        lines.append("|" + "---|" * len(scenario["columns"]))
        for row in scenario["rows"]:
            lines.append(
                "| " + " | ".join(_cell(row.get(c, "")) for c in scenario["columns"]) + " |"
            )
        lines += [""] + [f"- {note}" for note in scenario["notes"]]
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_report(
    out_dir: Path, scenarios: dict[str, dict[str, Any]], versions: dict[str, str]
) -> Path:
    """Merge into today's report (a subset run keeps the other scenarios' last figures)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.now(UTC).date().isoformat()
    json_path = out_dir / f"{date}.json"
    report: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {}
    report.update(
        date=date,
        machine={"cpus": os.cpu_count(), "python": platform.python_version(), **versions},
    )
    report.setdefault("scenarios", {}).update(scenarios)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / f"{date}.md").write_text(render_markdown(report))
    return json_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
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
            scenarios = asyncio.run(run_scenarios(names, settings, args.scale, work_dir))
    path = write_report(args.out, scenarios, versions)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
