"""Schedules fired by real relay processes: two relays and a schedule every second for a minute
fire each tick exactly once; a relay SIGKILLed mid-fire leaves its tick due, fired once by the
other; relays down for five ticks then up make the missed-tick policy's number of runs."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Batch, OutboxMessage, ScheduleRun, Task
from shared.embedded import EmbeddedUrls
from shared.settings import Settings, to_asyncpg_dsn
from tests.e2e.relays import Db, Fleet, Relay, fleet
from tests.helpers import make_user, wait_until
from tests.integration.schedule_support import add_schedule

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]
DEADLINE_S = 60.0
DOMAINS = ("a.example.com", "b.example.com")
SCHEDULE_ENV = {"SCAN_SCHEDULE_POLL_INTERVAL_S": "0.2"}
# The advisory lock (single-bigint key space) a test holds to stop a relay mid-fire.
FIRE_GATE_KEY = 0x5C0A_F12E
# Recording a run waits while the test holds the gate: the relay has written the run's
# batch, tasks and outbox rows, and not yet committed.
FIRE_GATE_SQL = f"""
CREATE FUNCTION test_fire_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({FIRE_GATE_KEY});
    RETURN NULL;
END $$;
CREATE TRIGGER test_fire_gate BEFORE INSERT ON schedule_runs
    FOR EACH STATEMENT EXECUTE FUNCTION test_fire_gate();
"""
DROP_GATE_SQL = "DROP TRIGGER IF EXISTS test_fire_gate ON schedule_runs;" + (
    "DROP FUNCTION IF EXISTS test_fire_gate();"
)


@pytest.fixture
def db(settings: Settings) -> Iterator[Db]:
    database = Db(settings)
    yield database
    database.close()


@pytest.fixture
def relays(servers: EmbeddedUrls, tmp_path: Path, clean_state: None) -> Iterator[Fleet]:
    # No worker runs: the runs' tasks stay pending, which is all these tests look at.
    with fleet(servers.database_url, servers.redis_url, 9, tmp_path) as running:
        yield running


def start_relay(relays: Fleet, name: str) -> Relay:
    return relays.relay(name, **SCHEDULE_ENV)


def stop_relay(relays: Fleet, relay: Relay) -> None:
    assert relay.service.stop() == 0
    relays.services.remove(relay.service)


def every_second(db: Db, missed: str = "run_once") -> uuid.UUID:
    """A schedule of two domains every second, from the next whole second."""
    anchor = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)

    async def add(sm: async_sessionmaker[AsyncSession]) -> uuid.UUID:
        user, _ = await make_user(sm, f"u{uuid.uuid4().hex[:8]}")
        return await add_schedule(
            sm,
            user.id,
            interval_s=1,
            anchor_at=anchor,
            next_fire_at=anchor,
            domains=DOMAINS,
            missed=missed,
        )

    return db(add)


def runs(db: Db, schedule_id: uuid.UUID) -> list[ScheduleRun]:
    async def read(sm: async_sessionmaker[AsyncSession]) -> list[ScheduleRun]:
        async with sm() as session:
            stmt = (
                select(ScheduleRun)
                .where(ScheduleRun.schedule_id == schedule_id)
                .order_by(ScheduleRun.tick_at)
            )
            return list((await session.execute(stmt)).scalars().all())

    return db(read)


def written(db: Db) -> tuple[int, int, int]:
    """(batches, tasks, outbox rows) in the database."""

    async def count(sm: async_sessionmaker[AsyncSession]) -> tuple[int, int, int]:
        async with sm() as session:
            values = []
            for model in (Batch, Task, OutboxMessage):
                stmt = select(func.count()).select_from(model)
                values.append(int((await session.execute(stmt)).scalar_one()))
            return values[0], values[1], values[2]

    return db(count)


def assert_each_tick_accounted_once(fired: list[ScheduleRun]) -> None:
    """Consecutive runs are 1 + missed_ticks seconds apart: every tick between the first and
    the last was fired by exactly one run or merged into exactly one."""
    for before, after in itertools.pairwise(fired):
        gap_s = (after.tick_at - before.tick_at).total_seconds()
        assert gap_s == 1 + after.missed_ticks, (before.tick_at, after.tick_at, after.missed_ticks)


def test_two_relays_fire_a_schedule_every_second_for_a_minute_exactly_once_per_tick(
    relays: Fleet, db: Db
) -> None:
    group = [start_relay(relays, "relay-a"), start_relay(relays, "relay-b")]
    schedule_id = every_second(db)
    wait_until(lambda: len(runs(db, schedule_id)) >= 60, 90, "a minute of ticks", every_s=0.5)
    for relay in group:
        stop_relay(relays, relay)

    fired = runs(db, schedule_id)
    assert len({run.tick_at for run in fired}) == len(fired)
    assert all(run.batch_id is not None and run.skipped_reason is None for run in fired)
    assert_each_tick_accounted_once(fired)
    # Nothing beyond the runs: no batch, task or message of a tick fired twice and refused.
    assert written(db) == (len(fired), 2 * len(fired), 2 * len(fired))
    firers = [relay.service.name for relay in group if "schedules_fired" in relay.service.log()]
    assert firers == ["relay-a", "relay-b"], "both relays were not firing side by side"


class FireGate:
    """While closed, a relay that fires stops before recording its runs (uncommitted)."""

    def __init__(self, database_url: str) -> None:
        self.runner = asyncio.Runner()
        self.connection = self.runner.run(asyncpg.connect(to_asyncpg_dsn(database_url)))
        self.runner.run(self.connection.execute(DROP_GATE_SQL + FIRE_GATE_SQL))

    def close(self) -> None:
        self.runner.run(self.connection.execute("SELECT pg_advisory_lock($1)", FIRE_GATE_KEY))

    def open(self) -> None:
        self.runner.run(self.connection.execute("SELECT pg_advisory_unlock($1)", FIRE_GATE_KEY))

    def held(self) -> int:
        sql = """
            SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
              AND classid = 0 AND objid::bigint = $1 AND objsubid = 1
        """
        return int(self.runner.run(self.connection.fetchval(sql, FIRE_GATE_KEY)))

    def dispose(self) -> None:
        self.runner.run(self.connection.execute("SELECT pg_advisory_unlock_all()"))
        self.runner.run(self.connection.execute(DROP_GATE_SQL))
        self.runner.run(self.connection.close())
        self.runner.close()


@pytest.fixture
def gate(servers: EmbeddedUrls) -> Iterator[FireGate]:
    fire_gate = FireGate(servers.database_url)
    yield fire_gate
    fire_gate.dispose()


def test_a_relay_killed_mid_fire_leaves_the_tick_due_and_the_other_fires_it_once(
    relays: Fleet, db: Db, gate: FireGate
) -> None:
    gate.close()
    doomed = start_relay(relays, "relay-doomed")
    tick = datetime.now(UTC).replace(microsecond=0)

    async def add(sm: async_sessionmaker[AsyncSession]) -> uuid.UUID:
        user, _ = await make_user(sm)
        return await add_schedule(
            sm, user.id, interval_s=3600, anchor_at=tick, next_fire_at=tick, domains=DOMAINS
        )

    schedule_id = db(add)
    wait_until(lambda: gate.held() == 1, DEADLINE_S, "the relay to stop mid-fire")
    survivor = start_relay(relays, "relay-survivor")
    relays.kill(doomed.service)
    gate.open()

    wait_until(lambda: runs(db, schedule_id), DEADLINE_S, "the tick to fire", every_s=0.2)
    # Give a doubled fire every chance to show: the survivor polls five times a second.
    deadline = time.monotonic() + 2
    wait_until(lambda: time.monotonic() > deadline, 5, "two more seconds of polls")
    (run,) = runs(db, schedule_id)
    assert run.tick_at == tick
    assert written(db) == (1, 2, 2)
    assert "schedules_fired" in survivor.service.log()
    assert survivor.metric("scan_outbox_schedule_ticks_total") == 1
    assert survivor.metric("scan_outbox_schedule_lateness_seconds_count") == 1


def test_relays_down_for_five_ticks_make_one_run_under_run_once_and_none_under_skip(
    relays: Fleet, db: Db
) -> None:
    relay = start_relay(relays, "relay-a")
    once, skip = every_second(db), every_second(db, missed="skip")
    wait_until(lambda: len(runs(db, skip)) >= 3, DEADLINE_S, "a few ticks before the stop")
    stop_relay(relays, relay)
    stopped_at = time.monotonic()
    wait_until(lambda: time.monotonic() - stopped_at > 5.5, 10, "five ticks of downtime")
    start_relay(relays, "relay-b")

    def after_gap(schedule_id: uuid.UUID) -> bool:
        fired = runs(db, schedule_id)
        gap = [n for n, run in enumerate(fired) if run.missed_ticks]
        return bool(gap) and len(fired) >= gap[0] + 3

    wait_until(lambda: after_gap(once) and after_gap(skip), DEADLINE_S, "ticks after the restart")

    fired = runs(db, once)
    merged = [run for run in fired if run.missed_ticks]
    assert len(merged) == 1, "run_once made more than one run for the downtime"
    assert merged[0].missed_ticks >= 4
    assert merged[0].batch_id is not None
    assert_each_tick_accounted_once(fired)

    recorded = runs(db, skip)
    (gap,) = [run for run in recorded if run.missed_ticks]
    assert gap.batch_id is None
    assert gap.skipped_reason == "missed"
    assert gap.missed_ticks >= 5
    after = recorded[recorded.index(gap) + 1]
    # The first run after the gap is the first tick after the restart: none in the gap ran.
    assert (after.tick_at - gap.tick_at).total_seconds() == gap.missed_ticks
    assert after.batch_id is not None
