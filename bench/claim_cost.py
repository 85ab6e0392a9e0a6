"""claim_cost: the relay's claim query beside many published rows, before and after vacuum.

Publishing a row is a non-HOT update (published_at is in the partial index's
predicate), so each published row leaves a dead entry in ix_outbox_unpublished
until VACUUM removes it, and every claim walks those entries first. This scenario
measures the claim (`queries.claim_batch`, a batch of 500, rolled back) in each
state, and how soon the outbox's autovacuum settings (revision 0002) clean up.
Bursts publish with the claim's own access path (SELECT ... ORDER BY id LIMIT
5000 FOR UPDATE SKIP LOCKED) in one statement per batch, to be quick.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.common import BenchContext, ScenarioResult, fill_outbox, ms
from shared.db import queries

PUBLISHED_SMALL = 10_000
PUBLISHED_LARGE = 1_000_000
UNPUBLISHED = 1_000
CLAIM_BATCH = 500
CLAIMS = 21
BURST_BATCH = 5000
AUTOVACUUM_DEADLINE_S = 150.0

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


async def _claims(ctx: BenchContext, count: int = CLAIMS) -> list[float]:
    """Seconds per claim of a full batch, each rolled back so the state stays as it is."""
    times = []
    for _ in range(count):
        async with ctx.sessionmaker() as session:
            started = time.perf_counter()
            await queries.claim_batch(session, CLAIM_BATCH)
            times.append(time.perf_counter() - started)
    return times


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


def _row(state: str, times: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "state": state,
        "first_ms": ms(times[0]),
        "median_ms": ms(statistics.median(times[1:] or times)),
        **extra,
    }


class Claims:
    """The scenario's rows, each with its median as a ratio to the flat baseline."""

    def __init__(self, result: ScenarioResult) -> None:
        self.result = result
        self.baseline_s = 0.0

    def add(self, state: str, times: list[float], **extra: Any) -> None:
        median = statistics.median(times[1:] or times)
        self.baseline_s = self.baseline_s or median
        ratio = round(median / self.baseline_s, 1)
        self.result.rows.append({**_row(state, times, **extra), "ratio_to_baseline": ratio})


async def _small_and_burst(ctx: BenchContext, claims: Claims, large: int) -> None:
    await ctx.reset()
    small = ctx.scaled(PUBLISHED_SMALL)
    await fill_outbox(ctx.sessionmaker, small, published=True, queue="old")
    await _add_unpublished(ctx)
    await ctx.vacuum()
    claims.add(f"beside {small:,} published, vacuumed (baseline)", await _claims(ctx))

    await _fresh(ctx, large)
    rate = await _burst(ctx, "update")
    await _add_unpublished(ctx)
    claims.add(
        f"right after a burst published {large:,}, no vacuum yet",
        await _claims(ctx),
        note=f"burst at {rate:,.0f} rows/s",
    )
    before = await _table_stats(ctx)
    waited = await _wait_for_autovacuum(ctx, before["autovacuums"])
    note = f"autovacuum ran {waited:.0f} s after the burst" if waited else "no autovacuum yet"
    claims.add(f"beside {large:,} published, after autovacuum", await _claims(ctx), note=note)


async def _history_then_small_burst(ctx: BenchContext, claims: Claims, large: int) -> None:
    """A table keeping history (the state `_small_and_burst` left) gets a smaller burst:
    the case where the default trigger (20 % of the table) waits far too long."""
    burst = large // 20
    await fill_outbox(ctx.sessionmaker, burst, published=False, queue="burst")
    await ctx.vacuum()
    await _burst(ctx, "update")
    await _add_unpublished(ctx)
    stats = await _table_stats(ctx)
    default_trigger = 50 + 0.2 * stats["reltuples"]
    claims.add(
        f"{large:,} kept, then a burst of {burst:,} published, no vacuum yet",
        await _claims(ctx),
        note=(
            f"{stats['dead']:,} dead rows; default autovacuum waits for "
            f"{default_trigger:,.0f}, revision 0002 for 5,000"
        ),
    )
    waited = await _wait_for_autovacuum(ctx, stats["autovacuums"])
    note = f"autovacuum ran {waited:.0f} s after the burst" if waited else "no autovacuum yet"
    claims.add("the same, after autovacuum (revision 0002 settings)", await _claims(ctx), note=note)


async def _snapshot_held(ctx: BenchContext, claims: Claims, large: int) -> None:
    """A long transaction elsewhere keeps the dead entries visible to it: no claim can skip
    them and no vacuum can remove them until it ends."""
    await _fresh(ctx, large)
    async with ctx.engine.connect() as holder:
        await _hold_snapshot(holder)
        await _burst(ctx, "update")
        await _add_unpublished(ctx)
        claims.add("burst while another transaction held a snapshot", await _claims(ctx, 5))
        await holder.rollback()
    claims.add("the same, just after that transaction ended", await _claims(ctx))


async def _hold_snapshot(connection: AsyncConnection) -> None:
    await connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    await connection.execute(text("SELECT count(*) FROM users"))


async def _delete_on_publish(ctx: BenchContext, claims: Claims, large: int) -> None:
    """The alternative remedy: delete rows as they are published."""
    await _fresh(ctx, large)
    rate = await _burst(ctx, "delete")
    await _add_unpublished(ctx)
    claims.add(
        f"delete-on-publish: right after deleting {large:,}, no vacuum yet",
        await _claims(ctx),
        note=f"burst at {rate:,.0f} rows/s",
    )


async def run(ctx: BenchContext) -> ScenarioResult:
    large = ctx.scaled(PUBLISHED_LARGE, minimum=20_000)
    result = ScenarioResult(
        title=f"claim_cost: claiming {CLAIM_BATCH} of {UNPUBLISHED:,} unpublished rows",
        columns=["state", "first_ms", "median_ms", "ratio_to_baseline", "note"],
        params={"large": large, "claims_per_state": CLAIMS},
    )
    claims = Claims(result)
    await _small_and_burst(ctx, claims, large)
    await _history_then_small_burst(ctx, claims, large)
    await _snapshot_held(ctx, claims, large)
    await _delete_on_publish(ctx, claims, large)
    for row in result.rows:
        row.setdefault("note", "")
    result.notes.append(
        "first_ms is the first claim in that state; median_ms the median of the next "
        f"{CLAIMS - 1}. The first claim after a burst also marks the dead entries it walks, "
        "which is why later claims are cheaper until VACUUM removes them."
    )
    return result
