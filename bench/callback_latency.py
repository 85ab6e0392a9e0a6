"""callback_latency: a task's end → its callback's POST at the receiver, p50 and p99.

`TASKS` tasks with a callback URL are written `running`, then ended one transaction each
(the worker's final write: status and `finished_at`) at `RATE_PER_S`, as a steady stream of
workers finishing would. A real relay process (NOTIFY listener, deliverer, publisher) sends
the callbacks to a receiver in this process that answers 204 at once and notes when each
POST's body has arrived. Latency: the end's COMMIT returning (taken in this process) → its
POST at the receiver, one clock. Target: p50 ≤ 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import psutil
from sqlalchemy import text

from bench.common import (
    BenchContext,
    ScenarioResult,
    Spread,
    ms,
    percentile,
    start_relay,
    verdict,
)
from shared import wakeups

TASKS = 550
RATES_PER_S = (20.0, 100.0)
TARGET_P50_MS = 100.0
DEADLINE_S = 60.0
RESPONSE = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

_FILL_SQL = text(
    """
    INSERT INTO tasks (id, user_id, target_domain, status, callback_url)
    SELECT gen_random_uuid(), (SELECT min(id) FROM users), 'cb' || g || '.example.com',
           'running', :url
    FROM generate_series(1, :count) g
    RETURNING id
    """
)
_END_SQL = text("UPDATE tasks SET status = 'succeeded', finished_at = now() WHERE id = :id")


class Arrivals:
    """A receiver answering 204 at once; `at[task_id]` is when that task's POST arrived."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            arrived = time.time()
            self.at.setdefault(json.loads(body)["task"]["id"], arrived)
            self.changed.set()
            writer.write(RESPONSE)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, KeyError, ValueError):
            pass
        finally:
            writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


async def _measure(ctx: BenchContext, url: str, arrivals: Arrivals, rate: float) -> list[float]:
    count = ctx.scaled(TASKS, minimum=100)
    async with ctx.engine.begin() as connection:
        await connection.execute(text("TRUNCATE deliveries CASCADE"))
        ids = [
            str(row.id) for row in await connection.execute(_FILL_SQL, {"url": url, "count": count})
        ]
    ended: dict[str, float] = {}
    start = time.monotonic()
    # Standing in for the worker, it sends the worker's hint after each end it commits.
    hints = wakeups.Hints(wakeups.create_client(ctx.settings))
    async with ctx.engine.connect() as connection:
        for n, task_id in enumerate(ids):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            async with connection.begin():
                await connection.execute(_END_SQL, {"id": task_id})
            ended[task_id] = time.time()
            await hints.finished([(uuid.UUID(task_id), None)], callbacks=True)
    await hints.aclose()
    deadline = time.monotonic() + DEADLINE_S
    while len(arrivals.at.keys() & ended.keys()) < len(ended) and time.monotonic() < deadline:
        arrivals.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrivals.changed.wait(), deadline - time.monotonic())
    missing = len(ended) - len(arrivals.at.keys() & ended.keys())
    if missing:
        raise RuntimeError(f"{missing} of {len(ended)} callbacks never arrived")
    return [arrivals.at[task_id] - ended[task_id] for task_id in ids]


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def run(ctx: BenchContext) -> ScenarioResult:
    result = ScenarioResult(
        title="callback_latency: a task's end → its callback's POST, receiver answering at once",
        label_columns=["ends_per_s"],
        columns=[
            "ends_per_s",
            "tasks",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "relay_cpu_ms_per_callback",
            "verdict",
        ],
        params={"tasks": ctx.scaled(TASKS, minimum=100), "reps": ctx.reps},
    )
    await ctx.reset()
    async with ctx.engine.begin() as connection:
        await connection.execute(text("UPDATE users SET callback_secret = 'whsec_bench'"))
    arrivals = Arrivals()
    port = await arrivals.start()
    relay = start_relay(ctx, "relay", SCAN_CALLBACK_ALLOW_HTTP="true", SCAN_ALLOW_PRIVATE="true")
    try:
        for rate in RATES_PER_S:
            p50s, p99s, maxes, cpus = [], [], [], []
            for _ in range(ctx.reps):
                cpu_before = _cpu_s(relay.popen.pid)
                samples = await _measure(ctx, f"http://127.0.0.1:{port}/hook", arrivals, rate)
                cpus.append(ms((_cpu_s(relay.popen.pid) - cpu_before) / len(samples)))
                p50s.append(ms(percentile(samples, 0.5)))
                p99s.append(ms(percentile(samples, 0.99)))
                maxes.append(ms(max(samples)))
                print(f"  {rate:g}/s: p50 {p50s[-1]} ms, p99 {p99s[-1]} ms", flush=True)
            p50 = Spread.of(p50s)
            result.rows.append(
                {
                    "ends_per_s": rate,
                    "tasks": len(samples),
                    "p50_ms": p50,
                    "p99_ms": Spread.of(p99s),
                    "max_ms": Spread.of(maxes),
                    "relay_cpu_ms_per_callback": Spread.of(cpus),
                    "verdict": verdict(p50.median, "≤", TARGET_P50_MS),
                }
            )
    finally:
        relay.stop()
        if arrivals.server is not None:
            arrivals.server.close()
    result.notes += [
        "Tasks written `running` with a callback URL, then ended one transaction each at the "
        "given rate (the worker's final write); the trigger writes each delivery and "
        "notifies. One real relay process delivers; the receiver (this process) answers "
        "204 at once.",
        "Latency: from the end's COMMIT returning in this process to the POST's body at the "
        f"receiver, one clock. Target: p50 ≤ {TARGET_P50_MS:g} ms. relay_cpu_ms_per_callback: "
        "the relay process's CPU (user + system) over the run per callback: what caps one "
        "relay's rate on a busy machine.",
    ]
    return result
