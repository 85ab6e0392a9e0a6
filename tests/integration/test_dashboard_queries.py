"""The dashboard's own SQL and Redis reads, against real PostgreSQL and Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service.ui import presence, reads, views
from relay_service.leader import LeaderElection
from shared import keys, safeguards
from shared.settings import Settings
from tests.dashboard import execute, make_task
from tests.helpers import make_user

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def aredis(settings: Settings, engine: object) -> AsyncIterator[aioredis.Redis]:
    client = safeguards.create_redis(settings)
    yield client
    await client.aclose()


async def task_at(
    sessionmaker: Sessions, user_id: int, created_ago_s: float, **offsets_ms: float
) -> uuid.UUID:
    """A task created `created_ago_s` ago; published/started/finished `offsets_ms` after that."""
    task_id = await make_task(sessionmaker, user_id, f"t{uuid.uuid4().hex[:6]}.example.com")
    created = "now() - make_interval(secs => :ago)"
    await execute(
        sessionmaker,
        f"UPDATE tasks SET created_at = {created}, updated_at = {created} WHERE id = :id",
        id=task_id,
        ago=created_ago_s,
    )
    await execute(
        sessionmaker,
        "UPDATE outbox SET created_at = t.created_at, available_at = t.created_at"
        " FROM tasks t WHERE t.id = outbox.task_id AND t.id = :id",
        id=task_id,
    )
    later = "t.created_at + make_interval(secs => :offset / 1000.0)"
    for name, offset_ms in offsets_ms.items():
        if name == "published":
            sql = (
                f"UPDATE outbox SET published_at = {later}"
                " FROM tasks t WHERE t.id = outbox.task_id AND t.id = :id"
            )
        else:
            # As every real transition does, updated_at moves with the timestamp it sets.
            sql = f"UPDATE tasks t SET {name}_at = {later}, updated_at = {later} WHERE t.id = :id"
        await execute(sessionmaker, sql, id=task_id, offset=offset_ms)
    return task_id


async def test_activity_counts_each_minute_of_the_window_and_nothing_older(
    sessionmaker: Sessions,
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    await task_at(sessionmaker, user.id, 600, published=100, started=200, finished=500)
    await task_at(sessionmaker, user.id, 600, published=100)
    await task_at(sessionmaker, user.id, 2 * 3600, published=100, started=200, finished=500)

    async with sessionmaker() as session:
        rows = await reads.activity_per_minute(session, 60)
    assert len(rows) == 60
    assert rows == sorted(rows, key=lambda row: row.minute)
    assert sum(row.created for row in rows) == 2
    assert sum(row.published for row in rows) == 2
    assert sum(row.finished for row in rows) == 1
    busy = [row for row in rows if row.created]
    assert len(busy) in (1, 2)  # the two tasks may straddle a minute boundary


async def test_start_latency_measures_from_the_message_that_started_the_run(
    sessionmaker: Sessions,
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    await task_at(sessionmaker, user.id, 30, started=100)
    await task_at(sessionmaker, user.id, 30, started=300)
    deferred = await task_at(sessionmaker, user.id, 30, started=200)
    # A message due after the run started did not start it: the first one did.
    await execute(
        sessionmaker,
        "INSERT INTO outbox (message_id, actor, queue, payload, task_id, available_at)"
        " VALUES (gen_random_uuid(), 'scan_domain', 'scans', '{}', :id, now() + interval '1 h')",
        id=deferred,
    )
    await task_at(sessionmaker, user.id, 2 * 3600, started=100)

    async with sessionmaker() as session:
        overall, per_minute = await reads.start_latency(session, 60)
    assert overall is not None
    assert overall.runs == 3
    assert overall.p50_ms == pytest.approx(200, abs=1)
    assert overall.p95_ms == pytest.approx(290, abs=1)
    assert sum(row.runs for row in per_minute) == 3
    assert all(row.minute is not None for row in per_minute)


async def test_relays_are_found_by_connection_name_and_the_leader_by_its_lock(
    sessionmaker: Sessions, settings: Settings
) -> None:
    lock = 0x5C0A_0000 + int(time.time()) % 1000  # apart from any relay of another test
    first, second = LeaderElection(settings, lock), LeaderElection(settings, lock)
    try:
        assert await first.check()
        assert not await second.check()
        async with sessionmaker() as session:
            relays = await reads.relay_connections(session, lock)
        assert [c.application_name for c in relays] == [views.RELAY_ELECTION_APP] * 2
        assert [c.leader for c in relays].count(True) == 1
        assert all(c.connected_at is not None for c in relays)

        await first.release()
        assert await second.check()
        async with sessionmaker() as session:
            relays = await reads.relay_connections(session, lock)
        assert [c.leader for c in relays] == [True]
    finally:
        await first.release()
        await second.release()


async def test_workers_are_the_named_broker_clients_heard_within_the_timeout(
    aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    redis_client.zadd(
        keys.BROKER_HEARTBEATS_KEY,
        {
            keys.worker_broker_id("pod-b", 12, "aaaa"): now_ms - 1500,
            keys.worker_broker_id("pod-a", 7, "bbbb"): now_ms - 200,
            keys.worker_broker_id("pod-gone", 3, "cccc"): now_ms - 61_000,
            str(uuid.uuid4()): now_ms - 100,
        },
    )
    seen = await presence.broker_presence(aredis, now_ms)
    assert seen.reachable
    assert [(w.host, w.pid) for w in seen.workers] == [("pod-a", "7"), ("pod-b", "12")]
    assert seen.workers[1].seen_s_ago == pytest.approx(1.5)
    assert seen.other_clients == 1


async def test_the_overview_names_the_leader_and_the_workers(
    sessionmaker: Sessions, settings: Settings, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    redis_client.zadd(
        keys.BROKER_HEARTBEATS_KEY, {keys.worker_broker_id("pod-a", 7, "x"): time.time() * 1000}
    )
    election = LeaderElection(settings)
    try:
        assert await election.check()
        overview = await views.load_overview(sessionmaker, aredis, settings)
    finally:
        await election.release()
    assert overview.relay_count == 1
    assert overview.leader is not None
    assert [w.host for w in overview.broker.workers] == ["pod-a"]
    assert overview.activity_chart is not None
    assert overview.database_error is None
