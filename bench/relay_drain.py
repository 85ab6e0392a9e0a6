"""relay_drain: how fast relays empty a backlog, against the database's own ceiling.

Each run starts from a system that has been running (a history of finished
tasks and published rows, vacuumed and analyzed), then one commit adds the whole
backlog. The ceiling is a loop that claims and marks batches exactly as the
relay does but publishes nothing. Relays run as real processes, woken by that
commit; the clock runs from it until no unpublished row is left.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from bench.common import (
    BarChart,
    BenchContext,
    ScenarioResult,
    Spread,
    backlog_left,
    fill_tasks,
    start_relay,
    verdict,
)
from relay_service.publisher import DramatiqPublisher
from relay_service.relay import Relay
from shared.db import outbox
from shared.dramatiq_broker import create_broker

ROWS = 100_000
HISTORY = 100_000
BATCH = 500
POLL_S = 0.05
TARGET_ONE_RELAY = 0.25
CEILING = "ceiling: claim and mark, no publish (in process)"
ONE_RELAY = "1 relay process"


async def _queue_backlog(ctx: BenchContext, rows: int) -> float:
    """Insert `rows` tasks in one transaction; the monotonic time of its commit."""
    async with ctx.sessionmaker() as session, session.begin():
        await fill_tasks(session, rows, ctx.settings.queue_name)
    return time.monotonic()


async def _history(ctx: BenchContext, rows: int) -> None:
    await ctx.reset()
    async with ctx.sessionmaker() as session, session.begin():
        await fill_tasks(session, rows, ctx.settings.queue_name, done=True)
    await ctx.vacuum(tables="outbox, tasks")


async def _ceiling(ctx: BenchContext, rows: int) -> float:
    """Claim-and-mark with no publishing: the database's limit, msgs/s."""
    await _history(ctx, ctx.scaled(HISTORY))
    await _queue_backlog(ctx, rows)
    started, done = time.monotonic(), 0
    while True:
        async with ctx.sessionmaker() as session, session.begin():
            claim = await outbox.claim_batch(session, BATCH, rows)
            batch = claim.messages
            published = [outbox.PublishedMessage(m.id, str(m.message_id)) for m in batch]
            await outbox.mark_published(session, published)
        done += len(batch)
        if len(batch) < BATCH:
            return done / (time.monotonic() - started)


async def _in_process(ctx: BenchContext, rows: int, *, pipelined: bool) -> float:
    """The relay's own drain loop in this process, msgs/s."""
    await _history(ctx, ctx.scaled(HISTORY))
    await _queue_backlog(ctx, rows)
    broker = create_broker(ctx.settings, middleware=[], socket_timeout_s=10)
    settings = ctx.settings.model_copy(
        update={"relay_batch_size": BATCH, "relay_client_window": rows}
    )
    relay = Relay(ctx.engine, DramatiqPublisher(broker, use_pipeline=pipelined), settings)
    started = time.monotonic()
    done = await relay.drain()
    rate = done / (time.monotonic() - started)
    broker.client.connection_pool.disconnect()
    return rate


async def _processes(ctx: BenchContext, rows: int, relays: int) -> float:
    """`relays` relay processes draining one committed backlog, msgs/s."""
    await _history(ctx, ctx.scaled(HISTORY))
    started = [
        start_relay(
            ctx,
            f"drain-relay-{relays}-{index}",
            SCAN_RELAY_BATCH_SIZE=str(BATCH),
            SCAN_RELAY_CLIENT_WINDOW=str(rows),
        )
        for index in range(relays)
    ]
    try:
        committed = await _queue_backlog(ctx, rows)
        while True:
            if not await backlog_left(ctx.sessionmaker):
                return rows / (time.monotonic() - committed)
            await asyncio.sleep(POLL_S)
    finally:
        for process in started:
            process.stop()


async def run(ctx: BenchContext) -> ScenarioResult:
    rows, history = ctx.scaled(ROWS), ctx.scaled(HISTORY)
    result = ScenarioResult(
        title=f"relay_drain: {rows:,} tasks queued beside {history:,} done, batches of {BATCH}",
        columns=["setup", "msgs_per_s", "ratio_to_ceiling", "verdict"],
        params={"rows": rows, "history": history, "batch": BATCH},
    )
    runs: dict[str, Callable[[], Awaitable[float]]] = {
        CEILING: lambda: _ceiling(ctx, rows),
        "relay loop, one enqueue per message (in process)": lambda: _in_process(
            ctx, rows, pipelined=False
        ),
        "relay loop, pipelined (in process)": lambda: _in_process(ctx, rows, pipelined=True),
        ONE_RELAY: lambda: _processes(ctx, rows, 1),
        "2 relay processes": lambda: _processes(ctx, rows, 2),
    }
    # Round by round, so drift on the machine touches every setup alike.
    samples: dict[str, list[float]] = {setup: [] for setup in runs}
    for _ in range(ctx.reps):
        for setup, measure in runs.items():
            samples[setup].append(round(await measure()))
    spreads = {setup: Spread.of(values) for setup, values in samples.items()}
    ceiling = spreads[CEILING].median
    for setup, spread in spreads.items():
        ratio = round(spread.median / ceiling, 2)
        row = {"setup": setup, "msgs_per_s": spread, "ratio_to_ceiling": ratio}
        if setup == ONE_RELAY:
            row["verdict"] = verdict(ratio, "≥", TARGET_ONE_RELAY)
        result.rows.append(row)
    result.charts.append(BarChart(f"relay drain of {rows:,} outbox rows", "messages/s", spreads))
    result.notes += (
        "Relay processes are timed from the commit that makes the backlog visible to the "
        "moment no unpublished row is left (polled every 50 ms). This machine has "
        f"{os.cpu_count()} CPUs shared by PostgreSQL, Redis and the relays. Target: one relay "
        f"at ≥ {TARGET_ONE_RELAY:g} of the ceiling (publishing costs at most 4x).",
        "The backlog is one client's, published with a dispatch window as large as the "
        "backlog: this measures the relay's own path, not the window. One relay at a time "
        "fills a client's window, so two relays drain one client's backlog no faster than one.",
    )
    return result
