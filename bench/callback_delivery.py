"""callback_delivery: deliveries per second by claim size, against a receiver that takes
`RECEIVER_DELAY_MS` to answer (a webhook endpoint doing a little work).

`DELIVERIES` deliveries are written straight to the table (signed with a user's secret);
one `Deliverer` (the relay's) in this process drains them with `callback_batch_size` of
1, 20, 50 (the default) and 100, while `bench.receiver` answers in its own process. Target:
the default sends ≥ 10 times the deliveries per second of one at a time.
"""

from __future__ import annotations

import asyncio
import sys
import time

from sqlalchemy import func, select, text

from bench.common import BarChart, BenchContext, ScenarioResult, Spread, start_process, verdict
from relay_service.deliverer import Deliverer
from shared.db.models import Delivery
from shared.embedded import free_port
from shared.settings import Settings

DELIVERIES = 2000
RECEIVER_DELAY_MS = 50.0
BATCH_SIZES = (1, 20, 50, 100)
DEFAULT_BATCH = int(Settings.model_fields["callback_batch_size"].default)
TARGET_RATIO = 10.0

_FILL_SQL = text(
    """
    INSERT INTO deliveries (delivery_id, user_id, url, payload)
    SELECT gen_random_uuid(), (SELECT min(id) FROM users), :url,
           jsonb_build_object('event', 'task.finished', 'n', g)
    FROM generate_series(1, :count) g
    """
)


async def _fill(ctx: BenchContext, count: int, url: str) -> None:
    async with ctx.engine.begin() as connection:
        # Each delivery's attempts reference it: they go with it.
        await connection.execute(text("TRUNCATE deliveries CASCADE"))
        await connection.execute(text("UPDATE users SET callback_secret = 'whsec_bench'"))
        await connection.execute(_FILL_SQL, {"url": url, "count": count})


async def _delivered(ctx: BenchContext) -> int:
    async with ctx.sessionmaker() as session:
        stmt = select(func.count()).select_from(Delivery).where(Delivery.delivered_at.is_not(None))
        return int((await session.execute(stmt)).scalar_one())


async def _rate(ctx: BenchContext, batch: int, count: int, url: str) -> float:
    await _fill(ctx, count, url)
    settings = ctx.settings.model_copy(
        update={"callback_batch_size": batch, "callback_allow_http": True, "allow_private": True}
    )
    deliverer = Deliverer(ctx.sessionmaker, settings)
    stop = asyncio.Event()
    started = time.monotonic()
    # The relay's own loop, as it runs in production.
    running = asyncio.create_task(deliverer.run(stop))
    while True:
        if await _delivered(ctx) >= count:
            break
        await asyncio.sleep(0.05)
    elapsed_s = time.monotonic() - started
    stop.set()
    await running
    delivered = await _delivered(ctx)
    if delivered != count:
        raise RuntimeError(f"batch {batch}: {delivered} of {count} delivered")
    rate = count / elapsed_s
    print(f"  batch {batch}: {rate:,.0f} deliveries/s ({count} in {elapsed_s:.1f} s)", flush=True)
    return rate


async def _listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


async def run(ctx: BenchContext) -> ScenarioResult:
    count = ctx.scaled(DELIVERIES, minimum=200)
    result = ScenarioResult(
        title=f"callback_delivery: deliveries/s by claim size, receiver answering in "
        f"{RECEIVER_DELAY_MS:g} ms",
        label_columns=["batch_size"],
        columns=["batch_size", "deliveries_per_s", "x_one_at_a_time", "verdict"],
        params={"deliveries": count, "receiver_delay_ms": RECEIVER_DELAY_MS, "reps": ctx.reps},
    )
    await ctx.reset()
    port = free_port()
    command = [sys.executable, "-m", "bench.receiver", "--port", str(port)]
    receiver = start_process(
        ctx, "receiver", [*command, "--delay-ms", str(RECEIVER_DELAY_MS)], ctx.env()
    )
    url = f"http://127.0.0.1:{port}/hook"
    rates: dict[int, list[float]] = {batch: [] for batch in BATCH_SIZES}
    try:
        await _listening(port)
        for _ in range(ctx.reps):
            for batch in BATCH_SIZES:
                # One at a time is slow: fewer deliveries, the same rate.
                size = count // 10 if batch == 1 else count
                rates[batch].append(await _rate(ctx, batch, size, url))
    finally:
        receiver.stop()
    chart = BarChart("callback_delivery: deliveries per second", "deliveries/s", {})
    for batch in BATCH_SIZES:
        ratios = Spread.of([r / one for r, one in zip(rates[batch], rates[1], strict=True)])
        result.rows.append(
            {
                "batch_size": batch,
                "deliveries_per_s": Spread.of(rates[batch]),
                "x_one_at_a_time": ratios,
                "verdict": verdict(ratios.median, "≥", TARGET_RATIO)
                if batch == DEFAULT_BATCH
                else "",
            }
        )
        chart.bars[f"batch {batch}"] = Spread.of(rates[batch])
    result.charts.append(chart)
    result.notes += [
        "One Deliverer in the benchmark process running the relay's loop (up to "
        "batch_size POSTs in flight, slots refilled a quarter at a time) until every "
        "delivery is delivered (checked every 50 ms); the receiver (`bench.receiver`) "
        "answers 204 after "
        f"{RECEIVER_DELAY_MS:g} ms in its own process. A fresh HTTP connection per POST "
        "(connections are pinned to the address the SSRF guard checked).",
        "A cycle lasts as long as its slowest POST (at most SCAN_CALLBACK_TIMEOUT_S): larger "
        "claims amortise that and the two transactions per cycle, at the cost of more "
        "connections open at once to receivers.",
        f"Target: the default claim size ({DEFAULT_BATCH}) ≥ {TARGET_RATIO:g} times the "
        "deliveries per second of one at a time.",
    ]
    return result
