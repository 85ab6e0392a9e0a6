"""wait_wakeup: clients waiting with `wait` against clients polling once a second.

One real API process; `WAITERS` tasks created in one batch, then:

- wait: one client per task holds `GET /api/v1/tasks/{id}?wait=30`; once all are waiting
  (the `scan_outbox_api_waiters` gauge says so), the database's transaction count is
  read over `IDLE_S` seconds and the API's RSS is read;
- poll: `POLLERS` clients each `GET /api/v1/tasks/{id}` once a second (without `wait`),
  the same figures over the same window.

Then, in each variant, `SINGLES` tasks are finished one at a time, `SINGLE_GAP_S` apart,
each answer timed from its own commit; and the rest in one UPDATE, timed until the last
answer (a burst: every client answered at the API's request rate).

Targets, as ratios: database transactions per client-second while nothing happens,
wait ≤ 1/100 of polling; and one task's commit-to-answer p99, wait ≤ 1/4 of polling's.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from bench import idle_cpu
from bench.common import BenchContext, DistributionChart, ScenarioResult, ms, percentile, verdict
from bench.create_throughput import fresh_token, start_api
from shared import wakeups

WAITERS = 1000
POLLERS = 100
SINGLES = 40
SINGLE_GAP_S = 0.05
POLL_INTERVAL_S = 1.0
IDLE_S = 5.0
WAIT_S = 30
XACT_RATIO_TARGET = 0.01
LATENCY_RATIO_TARGET = 0.25


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def _transactions(ctx: BenchContext) -> int:
    async with ctx.engine.connect() as connection:
        await connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        count = await connection.execute(
            text(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()"
            )
        )
        return int(count.scalar_one())


async def _idle_rate(ctx: BenchContext, clients: int) -> float:
    """Database transactions per client per second over IDLE_S."""
    before = await _transactions(ctx)
    await asyncio.sleep(IDLE_S)
    # PostgreSQL publishes its counters at most once a second.
    await asyncio.sleep(1.0)
    after = await _transactions(ctx)
    return (after - before) / IDLE_S / clients


async def _finish(ctx: BenchContext, task_id: str | None = None) -> float:
    """One task (or every one left) succeeded in one transaction, then its finish hints
    sent as the worker sends them; the clock just before its commit."""
    where = "status <> 'succeeded'" if task_id is None else "id = CAST(:id AS uuid)"
    async with ctx.engine.connect() as connection:
        ended = await connection.execute(
            text(
                f"UPDATE tasks SET status = 'succeeded', finished_at = now() WHERE {where} "
                "RETURNING id, batch_id"
            ),
            {"id": task_id},
        )
        rows = [(row[0], row[1]) for row in ended]
        started = time.monotonic()
        await connection.commit()
    hints = wakeups.Hints(wakeups.create_client(ctx.settings))
    await hints.finished(rows, callbacks=False)
    await hints.aclose()
    return started


async def _finish_and_time(
    ctx: BenchContext, ids: list[str], answered: dict[str, float], clients: list[Any], pid: int
) -> tuple[list[float], float, float]:
    """Single-task latencies, then the time until the last answer of a burst."""
    committed: dict[str, float] = {}
    for task_id in ids[:SINGLES]:
        committed[task_id] = await _finish(ctx, task_id)
        await asyncio.sleep(SINGLE_GAP_S)
    cpu_before_s = idle_cpu.tree_cpu_s(pid)
    burst_started = await _finish(ctx)
    await asyncio.wait_for(asyncio.gather(*clients), WAIT_S + 30)
    cpu_ms = 1000 * (idle_cpu.tree_cpu_s(pid) - cpu_before_s) / max(1, len(ids) - SINGLES)
    singles = [answered[task_id] - at for task_id, at in committed.items()]
    burst_s = max(answered[task_id] for task_id in ids[SINGLES:]) - burst_started
    return singles, burst_s, cpu_ms


async def _waiters_now(http: httpx.AsyncClient) -> float:
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith("scan_outbox_api_waiters "):
            return float(line.split()[1])
    return 0.0


async def _make_tasks(http: httpx.AsyncClient, count: int) -> list[str]:
    body = {"tasks": [{"target_domain": f"w{n}.example.com"} for n in range(count)]}
    created = await http.post("/api/v1/batches", json=body)
    if created.status_code != 201:
        raise RuntimeError(f"batch refused: {created.status_code}")
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = (await http.get(f"/api/v1/batches/{created.json()['id']}", params=params)).json()
        ids += [task["id"] for task in page["tasks"]]
        if not (cursor := page["next_cursor"]):
            return ids


async def _waiting(ctx: BenchContext, http: httpx.AsyncClient, pid: int) -> dict[str, Any]:
    ids = await _make_tasks(http, min(WAITERS, ctx.scaled(WAITERS, minimum=200)))
    rss_before = rss_kb(pid)
    answered: dict[str, float] = {}

    async def wait(task_id: str) -> None:
        while True:
            response = await http.get(f"/api/v1/tasks/{task_id}", params={"wait": WAIT_S})
            if response.json().get("status") == "succeeded":
                answered[task_id] = time.monotonic()
                return

    clients = [asyncio.create_task(wait(task_id)) for task_id in ids]
    deadline = time.monotonic() + 60
    while await _waiters_now(http) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError("the waiters never all registered")
        await asyncio.sleep(0.2)
    rss_waiting = rss_kb(pid)
    rate = await _idle_rate(ctx, len(ids))
    singles, burst_s, cpu_ms = await _finish_and_time(ctx, ids, answered, clients, pid)
    return {
        "clients": len(ids),
        "xact_per_client_s": rate,
        "burst_api_cpu_ms": cpu_ms,
        "kb_per_waiter": (rss_waiting - rss_before) / len(ids),
        "latencies_s": singles,
        "burst_s": burst_s,
    }


async def _polling(ctx: BenchContext, http: httpx.AsyncClient, pid: int) -> dict[str, Any]:
    ids = await _make_tasks(http, POLLERS)
    answered: dict[str, float] = {}

    async def poll(task_id: str) -> None:
        while True:
            asked = time.monotonic()
            response = await http.get(f"/api/v1/tasks/{task_id}")
            if response.json().get("status") == "succeeded":
                answered[task_id] = time.monotonic()
                return
            await asyncio.sleep(max(0.0, POLL_INTERVAL_S - (time.monotonic() - asked)))

    clients = [asyncio.create_task(poll(task_id)) for task_id in ids]
    await asyncio.sleep(POLL_INTERVAL_S)  # every poller under way
    rate = await _idle_rate(ctx, len(ids))
    singles, burst_s, cpu_ms = await _finish_and_time(ctx, ids, answered, clients, pid)
    return {
        "clients": len(ids),
        "xact_per_client_s": rate,
        "burst_api_cpu_ms": cpu_ms,
        "kb_per_waiter": "",
        "latencies_s": singles,
        "burst_s": burst_s,
    }


async def run(ctx: BenchContext) -> ScenarioResult:
    result = ScenarioResult(
        title="wait_wakeup: clients waiting with wait=30 against clients polling every second",
        label_columns=["variant"],
        columns=[
            "variant",
            "clients",
            "xact_per_client_s",
            "x_poll",
            "kb_per_waiter",
            "answer_p50_ms",
            "answer_p99_ms",
            "burst_last_answer_ms",
            "burst_api_cpu_ms_per_answer",
            "verdict",
        ],
        params={"idle_s": IDLE_S, "poll_interval_s": POLL_INTERVAL_S},
    )
    token = await fresh_token(ctx)
    # One user holds every waiter here: its share must be the process's whole limit.
    room = str(WAITERS + 100)
    api, port = start_api(
        ctx, "wait-api", SCAN_WAIT_MAX_WAITERS=room, SCAN_WAIT_MAX_WAITERS_PER_CLIENT=room
    )
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    headers = {"Authorization": f"Bearer {token}"}
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(
            base_url=base_url, headers=headers, limits=limits, timeout=WAIT_S + 30
        ) as http:
            waited = await _waiting(ctx, http, api.popen.pid)
            polled = await _polling(ctx, http, api.popen.pid)
    finally:
        api.stop()
    _add_rows(result, waited, polled)
    return result


def _add_rows(result: ScenarioResult, waited: dict[str, Any], polled: dict[str, Any]) -> None:
    xact_ratio = waited["xact_per_client_s"] / polled["xact_per_client_s"]
    p99 = {
        name: percentile(run["latencies_s"], 0.99) for name, run in (("w", waited), ("p", polled))
    }
    latency_ratio = p99["w"] / p99["p"]
    for name, run in (("wait=30", waited), ("poll every 1 s", polled)):
        own = name == "wait=30"
        result.rows.append(
            {
                "variant": name,
                "clients": run["clients"],
                "xact_per_client_s": round(run["xact_per_client_s"], 4),
                "x_poll": round(xact_ratio, 4) if own else 1.0,
                "kb_per_waiter": round(run["kb_per_waiter"], 1) if own else "",
                "answer_p50_ms": round(ms(percentile(run["latencies_s"], 0.5)), 1),
                "answer_p99_ms": round(ms(percentile(run["latencies_s"], 0.99)), 1),
                "burst_last_answer_ms": round(ms(run["burst_s"]), 1),
                "burst_api_cpu_ms_per_answer": round(run["burst_api_cpu_ms"], 2),
                "verdict": (
                    f"xact {verdict(xact_ratio, '≤', XACT_RATIO_TARGET)}; "
                    f"p99 {verdict(latency_ratio, '≤', LATENCY_RATIO_TARGET)}"
                )
                if own
                else "",
            }
        )
    result.charts.append(
        DistributionChart(
            "wait_wakeup: from the commit that ends one task to its answer",
            "ms",
            {
                "wait=30": [ms(s) for s in waited["latencies_s"]],
                "poll every 1 s": [ms(s) for s in polled["latencies_s"]],
            },
        )
    )
    result.notes += [
        f"Idle window {IDLE_S:g} s: database transactions (pg_stat_database) per client per "
        "second while nothing changes. A waiting client costs none (one LISTEN connection per "
        "API process); a polling one costs two per request (token lookup, read).",
        "kb_per_waiter: the API process's RSS with every client waiting, less before, per "
        "waiter (an HTTP connection, a request and an asyncio.Event).",
        f"answer_p50/p99: {SINGLES} tasks ended one at a time, {SINGLE_GAP_S:g} s apart, "
        "each timed from just before its COMMIT to its client's answer. "
        "burst_last_answer_ms: every other task ended by one UPDATE, until the last client "
        "has its answer. burst_api_cpu_ms_per_answer is the API process's CPU over that burst "
        "per answer: well under the elapsed time per answer, so the burst's length is this "
        "benchmark's own client (one Python process holding every connection), not the API.",
    ]
