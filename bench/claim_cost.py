"""claim_cost: the relay's claim query beside many published rows, before and after vacuum.

Publishing a row is a non-HOT update (published_at is in the partial index's
predicate), so each published row leaves a dead entry in ix_outbox_backlog
until VACUUM removes it, and every claim walks those entries first. This scenario
measures the claim (`outbox.claim_batch`, a batch of 500, rolled back) in each
state, and how soon the outbox's autovacuum settings (revision 0002) clean up.
Bursts publish with the claim's own access path (SELECT ... ORDER BY id LIMIT
5000 FOR UPDATE SKIP LOCKED) in one statement per batch, to be quick.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.common import (
    BenchContext,
    DistributionChart,
    ScenarioResult,
    Spread,
    fill_outbox,
    ms,
    verdict,
)
from shared.db import outbox

PUBLISHED_SMALL = 10_000
PUBLISHED_LARGE = 1_000_000
UNPUBLISHED = 1_000
CLAIM_BATCH = 500
CLAIMS = 21
BURST_BATCH = 5000
AUTOVACUUM_DEADLINE_S = 100.0
EXPLAIN = "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON)"
TARGET_RATIO = 1.5

# Stand-ins for the relay's mark step, one batch per statement.
_BURST_SQL = {
    "update": """
        UPDATE outbox SET published_at = clock_timestamp()
        WHERE id IN (SELECT id FROM outbox WHERE published_at IS NULL AND dead_at IS NULL
                     ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED)
    """,
    "delete": """
        DELETE FROM outbox
        WHERE id IN (SELECT id FROM outbox WHERE published_at IS NULL AND dead_at IS NULL
                     ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED)
    """,
}


async def _claim_statement(ctx: BenchContext) -> tuple[str, Any]:
    """The SQL and parameters `outbox.claim_batch` sends, captured from the driver."""
    sent: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        sent.append((args[2], args[3]))  # (statement, parameters)

    event.listen(ctx.engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with ctx.sessionmaker() as session:
            await outbox.claim_batch(session, CLAIM_BATCH, ctx.settings.relay_client_window)
    finally:
        event.remove(ctx.engine.sync_engine, "before_cursor_execute", capture)
    return sent[-1]


async def _claims(ctx: BenchContext, claim: tuple[str, Any], count: int) -> list[float]:
    """Server execution seconds of each claim (EXPLAIN ANALYZE of the very statement),
    each rolled back so the state stays as it is."""
    statement, parameters = claim
    times = []
    async with ctx.engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        for _ in range(count):
            transaction = driver.transaction()
            await transaction.start()
            plan = await driver.fetchval(f"{EXPLAIN} {statement}", *parameters)
            await transaction.rollback()
            # SQLAlchemy's connection setup may already decode JSON.
            decoded = json.loads(plan) if isinstance(plan, str) else plan
            times.append(decoded[0]["Execution Time"] / 1000)
    return times


async def _round_trip(ctx: BenchContext) -> float:
    """Median seconds of the relay's own call, 500 rows fetched into Python included."""
    times = []
    for _ in range(5):
        async with ctx.sessionmaker() as session:
            started = time.perf_counter()
            await outbox.claim_batch(session, CLAIM_BATCH, ctx.settings.relay_client_window)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _burst(ctx: BenchContext, mode: str) -> float:
    """Publish (or delete) every unpublished row in batches; rows per second."""
    started, done = time.monotonic(), 0
    while True:
        async with ctx.sessionmaker() as session, session.begin():
            result = await session.execute(text(_BURST_SQL[mode]), {"batch": BURST_BATCH})
        count = int(result.rowcount)  # type: ignore[attr-defined]
        done += count
        if count < BURST_BATCH:
            return done / (time.monotonic() - started)


async def _table_stats(ctx: BenchContext) -> dict[str, Any]:
    stmt = text(
        """
        SELECT n_live_tup, n_dead_tup, autovacuum_count,
               (SELECT reltuples FROM pg_class WHERE relname = 'outbox') AS reltuples
        FROM pg_stat_user_tables WHERE relname = 'outbox'
        """
    )
    async with ctx.sessionmaker() as session:
        row = (await session.execute(stmt)).one()
    return {"live": row[0], "dead": row[1], "autovacuums": row[2], "reltuples": row[3]}


async def _wait_for_autovacuum(ctx: BenchContext, before: int) -> float | None:
    """Seconds until autovacuum has processed the outbox again; None past the deadline."""
    started = time.monotonic()
    while time.monotonic() - started < AUTOVACUUM_DEADLINE_S:
        if (await _table_stats(ctx))["autovacuums"] > before:
            return time.monotonic() - started
        await asyncio.sleep(1.0)
    return None


async def _fresh(ctx: BenchContext, rows: int) -> None:
    """`rows` unpublished rows, vacuumed: the state before a burst."""
    await ctx.reset()
    await fill_outbox(ctx.sessionmaker, rows, published=False, queue=ctx.settings.queue_name)
    await ctx.vacuum()


async def _add_unpublished(ctx: BenchContext) -> None:
    await fill_outbox(ctx.sessionmaker, UNPUBLISHED, published=False, queue="other")


class Claims:
    """The scenario's rows, each with its median as a ratio to the flat baseline."""

    def __init__(self, result: ScenarioResult, claim: tuple[str, Any]) -> None:
        self.result = result
        self.claim = claim
        self.baseline_ms = 0.0

    async def add(
        self,
        ctx: BenchContext,
        state: str,
        count: int = CLAIMS,
        note: str = "",
        *,
        judged: bool = True,
    ) -> None:
        """Measure `count` claims in the current state; `judged` rows carry the target's
        verdict (the others show why a state costs what it does)."""
        times = await _claims(ctx, self.claim, count)
        repeated = Spread.of([ms(seconds) for seconds in times[1:] or times])
        self.baseline_ms = self.baseline_ms or repeated.median
        ratio = round(repeated.median / self.baseline_ms, 2)
        self.result.rows.append(
            {
                "state": state,
                "first_ms": ms(times[0]),
                "claim_ms": repeated,
                "ratio_to_baseline": ratio,
                "verdict": verdict(ratio, "≤", TARGET_RATIO) if judged else "",
                "relay_call_ms": ms(await _round_trip(ctx)),
                "note": note,
            }
        )


async def _just_published(ctx: BenchContext, claims: Claims, rows: int) -> None:
    """`rows` published in a burst, the claim measured before any vacuum."""
    await _fresh(ctx, rows)
    rate = await _burst(ctx, "update")
    await _add_unpublished(ctx)
    await claims.add(
        ctx,
        f"right after a burst published {rows:,}, no vacuum yet",
        note=f"burst at {rate:,.0f} rows/s",
    )


async def _small_and_burst(ctx: BenchContext, claims: Claims, large: int) -> None:
    await ctx.reset()
    small = ctx.scaled(PUBLISHED_SMALL)
    await fill_outbox(ctx.sessionmaker, small, published=True, queue="old")
    await _add_unpublished(ctx)
    await ctx.vacuum()
    await claims.add(ctx, f"beside {small:,} published, vacuumed (baseline)")

    await _just_published(ctx, claims, small)
    await _just_published(ctx, claims, large)
    before = await _table_stats(ctx)
    waited = await _wait_for_autovacuum(ctx, before["autovacuums"])
    await claims.add(ctx, f"beside {large:,} published, after autovacuum", note=_waited(waited))


def _waited(waited_s: float | None) -> str:
    if waited_s is None:
        return f"no autovacuum within {AUTOVACUUM_DEADLINE_S:g} s"
    return f"autovacuum ran {waited_s:.0f} s after the burst"


async def _history_then_small_burst(ctx: BenchContext, claims: Claims, large: int) -> None:
    """A table keeping history (the state `_small_and_burst` left) gets a smaller burst:
    the case where the default trigger (20 % of the table) waits far too long."""
    burst = max(large // 20, 10_000)
    await fill_outbox(ctx.sessionmaker, burst, published=False, queue="burst")
    await ctx.vacuum()
    before = await _table_stats(ctx)
    await _burst(ctx, "update")
    await _add_unpublished(ctx)
    default_trigger = 50 + 0.2 * before["reltuples"]
    await claims.add(
        ctx,
        f"{large:,} kept, then a burst of {burst:,} published, no vacuum yet",
        note=(
            f"{burst:,} dead rows: the default autovacuum waits for {default_trigger:,.0f}, "
            "revision 0002 for 5,000"
        ),
    )
    waited = await _wait_for_autovacuum(ctx, before["autovacuums"])
    await claims.add(
        ctx, "the same, after autovacuum (revision 0002 settings)", note=_waited(waited)
    )


async def _snapshot_held(ctx: BenchContext, claims: Claims, large: int) -> None:
    """A long transaction elsewhere keeps the dead entries visible to it: no claim can skip
    them and no vacuum can remove them until it ends."""
    await _fresh(ctx, large)
    async with ctx.engine.connect() as holder:
        await _hold_snapshot(holder)
        await _burst(ctx, "update")
        await _add_unpublished(ctx)
        await claims.add(
            ctx, "burst while another transaction held a snapshot", count=5, judged=False
        )
        await holder.rollback()
    await claims.add(ctx, "the same, just after that transaction ended", judged=False)


async def _hold_snapshot(connection: AsyncConnection) -> None:
    await connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    await connection.execute(text("SELECT count(*) FROM users"))


async def _delete_on_publish(ctx: BenchContext, claims: Claims, large: int) -> None:
    """The alternative remedy: delete rows as they are published."""
    await _fresh(ctx, large)
    rate = await _burst(ctx, "delete")
    await _add_unpublished(ctx)
    await claims.add(
        ctx,
        f"delete-on-publish: right after deleting {large:,}, no vacuum yet",
        note=f"burst at {rate:,.0f} rows/s",
        judged=False,
    )
    started = time.monotonic()
    await ctx.vacuum(analyze=False)
    elapsed = time.monotonic() - started
    await claims.add(
        ctx, "delete-on-publish, after VACUUM", note=f"VACUUM took {elapsed:.1f} s", judged=False
    )


async def run(ctx: BenchContext) -> ScenarioResult:
    large = ctx.scaled(PUBLISHED_LARGE, minimum=20_000)
    result = ScenarioResult(
        title=f"claim_cost: claiming {CLAIM_BATCH} of {UNPUBLISHED:,} unpublished rows",
        columns=[
            "state",
            "first_ms",
            "claim_ms",
            "ratio_to_baseline",
            "verdict",
            "relay_call_ms",
            "note",
        ],
        params={"large": large, "claims_per_state": CLAIMS},
    )
    # Captured once on an empty table: capturing runs a claim, which would spoil a "first".
    await ctx.reset()
    claims = Claims(result, await _claim_statement(ctx))
    await _small_and_burst(ctx, claims, large)
    await _history_then_small_burst(ctx, claims, large)
    await _snapshot_held(ctx, claims, large)
    await _delete_on_publish(ctx, claims, large)
    result.charts.append(
        DistributionChart(
            f"claim of {CLAIM_BATCH} rows, server time per state",
            "ms",
            {row["state"]: row["claim_ms"].samples for row in result.rows},
            log_scale=True,
        )
    )
    result.notes += [
        "first_ms: server execution time of the first claim in that state; claim_ms: median "
        f"(min-max) of the next {CLAIMS - 1} (EXPLAIN ANALYZE of the statement claim_batch "
        f"sends). Target: ratio ≤ {TARGET_RATIO:g} in every judged state. "
        "relay_call_ms: the relay's whole call, 500 rows decoded into Python included.",
        "The first claim after a burst also marks the dead entries it walks as dead, which "
        "is why later claims are cheaper, though not flat, until VACUUM removes them.",
    ]
    return result
