"""create_throughput: creates per second over HTTP, the real route against a direct send.

A real uvicorn process (`bench.direct_app`) serves both routes on the same servers:

- real: `POST /api/v1/tasks`, task + outbox row (+ NOTIFY) in one statement, with the
  Redis safeguards on (rate limit set far above the load, so it is called and never
  refuses; the created marker after commit);
- baseline: `POST /bench/direct-tasks`, the task row alone, commit, then the Dramatiq
  message sent from the request (what the outbox replaces);
- real, safeguards off: the real route in a second API process started with
  `SCAN_REDIS_SAFEGUARDS=false` (no rate-limit call, no marker).

`bench.loadgen` drives each run from its own process (closed loop, 32 or 64 clients,
one keep-alive connection each); only 200/201 answers count. Runs alternate
(real, baseline, off, real, …) so drift on the machine hits every variant alike.
No relay or worker runs: this is the request path alone (messages and outbox rows
pile up and are cleared between runs); the relay's own cost is `relay_drain`'s.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from bench import idle_cpu
from bench.common import (
    BarChart,
    BenchContext,
    Process,
    ScenarioResult,
    Spread,
    start_process,
    verdict,
    wait_live,
)
from bench.direct_app import DIRECT_PATH
from scanctl.processes import api_command
from shared.db import users
from shared.db.models import Task
from shared.embedded import free_port
from shared.tokens import hash_token, new_token

CONCURRENCIES = (32, 64)
DURATION_S = 20.0
WARMUP_S = 2.0
TARGET_RATIO = 0.9
REAL, BASELINE, OFF = "real (safeguards on)", "baseline: commit, then send", "real, safeguards off"
# High enough that the rate limit's Redis script runs on every create and never refuses.
UNLIMITED = {"SCAN_RATE_LIMIT_PER_MINUTE": "60000000", "SCAN_RATE_LIMIT_BURST": "1000000000"}


def start_api(ctx: BenchContext, name: str, **extra_env: str) -> tuple[Process, int]:
    """`bench.direct_app` under uvicorn, returned once `/livez` answers."""
    port = free_port()
    command = [
        "bench.direct_app:main" if part == "api_service.app:main" else part
        for part in api_command("127.0.0.1", port)
    ]
    process = start_process(ctx, name, command, ctx.env(**UNLIMITED, **extra_env))
    return wait_live(process, port), port


async def fresh_token(ctx: BenchContext) -> str:
    """Empty tables and Redis, and one user whose token the load sends."""
    await ctx.reset()
    token = new_token()
    async with ctx.sessionmaker() as session, session.begin():
        await users.insert_user(session, "bench-http", hash_token(token), is_admin=False)
    return token


@dataclass(frozen=True)
class Target:
    variant: str
    port: int
    path: str
    pid: int


async def run_load(
    target: Target, token: str, concurrency: int, duration_s: float
) -> dict[str, Any]:
    """One closed-loop run of `bench.loadgen`; its JSON figures."""
    command = [sys.executable, "-m", "bench.loadgen", "--port", str(target.port)]
    command += ["--path", target.path]
    command += ["--token", token, "--concurrency", str(concurrency)]
    command += ["--duration-s", str(duration_s)]
    child = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"load generator exited with {child.returncode}")
    figures: dict[str, Any] = json.loads(stdout)
    return figures


async def _tasks_written(ctx: BenchContext) -> int:
    async with ctx.sessionmaker() as session:
        return int((await session.execute(select(func.count()).select_from(Task))).scalar_one())


async def _measure(
    ctx: BenchContext, target: Target, concurrency: int, duration_s: float
) -> tuple[float, float, int]:
    """Completed creates per second, API CPU ms per create and failed requests, from a
    clean slate."""
    token = await fresh_token(ctx)
    cpu_before_s = idle_cpu.tree_cpu_s(target.pid)
    figures = await run_load(target, token, concurrency, duration_s)
    cpu_ms = 1000 * (idle_cpu.tree_cpu_s(target.pid) - cpu_before_s) / max(1, figures["ok"])
    written = await _tasks_written(ctx)
    # A request in flight at the stop may commit without its answer being counted.
    if not figures["ok"] <= written <= figures["ok"] + concurrency:
        raise RuntimeError(f"{target.variant}: {figures['ok']} answered, {written} tasks written")
    errors = sum(figures["statuses"].values()) + sum(figures["errors"].values())
    rate = figures["ok"] / figures["elapsed_s"]
    print(
        f"  {target.variant}, {concurrency} clients: {rate:,.0f} req/s "
        f"({figures['ok']} in {figures['elapsed_s']:.1f} s, API CPU {cpu_ms:.2f} ms each), "
        f"statuses {figures['statuses']}, errors {figures['errors']}",
        flush=True,
    )
    return rate, cpu_ms, errors


Runs = dict[str, tuple[list[float], list[float], int]]


async def _compare(
    ctx: BenchContext, targets: list[Target], concurrency: int, duration_s: float
) -> Runs:
    """`ctx.reps` rounds of every target in turn: each variant's rates, CPU ms per create
    and total errors."""
    rates: dict[str, list[float]] = {target.variant: [] for target in targets}
    cpu_ms: dict[str, list[float]] = {target.variant: [] for target in targets}
    errors = dict.fromkeys(rates, 0)
    for _ in range(ctx.reps):
        for target in targets:
            rate, cpu, failed = await _measure(ctx, target, concurrency, duration_s)
            rates[target.variant].append(rate)
            cpu_ms[target.variant].append(cpu)
            errors[target.variant] += failed
    return {variant: (rates[variant], cpu_ms[variant], errors[variant]) for variant in rates}


def _add_rows(
    result: ScenarioResult,
    chart: BarChart,
    concurrency: int,
    runs: Runs,
) -> None:
    baseline = runs[BASELINE][0]
    for variant, (rates, cpu_ms, errors) in runs.items():
        # Runs alternate, so the i-th run of a variant is paired with the i-th baseline run.
        ratios = Spread.of([rate / base for rate, base in zip(rates, baseline, strict=True)])
        result.rows.append(
            {
                "clients": concurrency,
                "variant": variant,
                "req_per_s": Spread.of(rates),
                "api_cpu_ms_per_create": Spread.of(cpu_ms),
                "failed_requests": errors,
                "x_baseline": ratios,
                "verdict": verdict(ratios.median, "≥", TARGET_RATIO) if variant == REAL else "",
            }
        )
        chart.bars[f"{variant}, {concurrency} clients"] = Spread.of(rates)


async def run(ctx: BenchContext) -> ScenarioResult:
    duration_s = max(3.0, DURATION_S * ctx.scale)
    result = ScenarioResult(
        title="create_throughput: POST /api/v1/tasks against commit-then-send, over HTTP",
        label_columns=["clients", "variant"],
        columns=[
            "clients",
            "variant",
            "req_per_s",
            "api_cpu_ms_per_create",
            "failed_requests",
            "x_baseline",
            "verdict",
        ],
        params={"duration_s": duration_s, "concurrencies": CONCURRENCIES, "reps": ctx.reps},
    )
    chart = BarChart("create_throughput: completed creates per second", "req/s", {})
    result.charts.append(chart)
    on, on_port = start_api(ctx, "throughput-api")
    off, off_port = start_api(ctx, "throughput-api-off", SCAN_REDIS_SAFEGUARDS="false")
    try:
        targets = [
            Target(REAL, on_port, "/api/v1/tasks", on.popen.pid),
            Target(BASELINE, on_port, DIRECT_PATH, on.popen.pid),
            Target(OFF, off_port, "/api/v1/tasks", off.popen.pid),
        ]
        for target in targets:  # warm the pools and imports; not counted
            await _measure(ctx, target, max(CONCURRENCIES), WARMUP_S)
        for concurrency in CONCURRENCIES:
            _add_rows(
                result, chart, concurrency, await _compare(ctx, targets, concurrency, duration_s)
            )
    finally:
        on.stop()
        off.stop()
    result.notes += [
        f"{duration_s:g} s per run, {ctx.reps} runs per variant, alternating; one API process "
        "(uvicorn, 1 worker) per setting, the load from a separate `bench.loadgen` process; "
        "PostgreSQL, Redis, API and load generator share this machine's CPUs.",
        "x_baseline pairs each run with the baseline run of the same round. Target for the "
        f"real route with safeguards on: ≥ {TARGET_RATIO:g} of the baseline.",
        "Safeguards on: the rate-limit script runs on every create (limits far above the "
        "load) and the created marker is set after commit; no Idempotency-Key is sent, so no "
        "lock is taken. Off: SCAN_REDIS_SAFEGUARDS=false.",
        "No relay or worker runs: only the request path is measured. api_cpu_ms_per_create "
        "is the API process's user + system CPU over the run divided by completed creates: "
        "less sensitive than req/s to other load on the machine.",
    ]
    return result
