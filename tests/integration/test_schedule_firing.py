"""Firing due schedules against a real PostgreSQL and Redis, with a fixed clock: one transaction
writes the run's batch, tasks, outbox rows and next fire time; concurrent claims never fire a
tick twice; missed ticks follow the policy; daylight saving as the trigger defines it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.firing import SKIPPED_MISSED, SKIPPED_RATE_LIMITED, fire_due
from relay_service.run_reports import report_ended
from shared import safeguards
from shared.db import users
from shared.db.models import Delivery, Lane, OutboxMessage, Task, TaskStatus
from shared.settings import Settings
from tests.helpers import api_client, make_user
from tests.integration.schedule_support import add_schedule, runs_of, schedule_row

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = safeguards.create_redis(settings)
    yield client
    await client.aclose()


async def test_a_due_schedule_fires_one_batch_in_the_batch_lane_and_moves_to_its_next_tick(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, redis: aioredis.Redis
) -> None:
    user, _ = await make_user(sessionmaker)
    domains = ("a.example.com", "b.example.com")
    schedule_id = await add_schedule(
        sessionmaker,
        user.id,
        interval_s=60,
        anchor_at=T0,
        next_fire_at=T0 + timedelta(minutes=1),
        domains=domains,
    )
    early = await fire_due(sessionmaker, redis, settings, now=T0 + timedelta(seconds=59))
    assert early.fired == 0

    counts = await fire_due(sessionmaker, redis, settings, now=T0 + timedelta(seconds=60.4))

    assert counts.fired == 1
    (run,) = await runs_of(sessionmaker, schedule_id)
    assert (run.tick_at, run.missed_ticks, run.skipped_reason) == (
        T0 + timedelta(minutes=1),
        0,
        None,
    )
    async with sessionmaker() as session:
        tasks = (await session.execute(select(Task).order_by(Task.batch_position))).scalars().all()
        rows = (await session.execute(select(OutboxMessage))).scalars().all()
    assert [t.target_domain for t in tasks] == list(domains)
    assert {t.batch_id for t in tasks} == {run.batch_id}
    assert {t.status for t in tasks} == {TaskStatus.PENDING}
    assert sorted(r.task_id for r in rows) == sorted(t.id for t in tasks)
    assert {(r.user_id, r.lane) for r in rows} == {(user.id, Lane.BATCH)}
    schedule = await schedule_row(sessionmaker, schedule_id)
    assert schedule.next_fire_at == T0 + timedelta(minutes=2)
    assert schedule.last_fired_at == T0 + timedelta(minutes=1)


async def test_concurrent_claims_fire_each_tick_of_many_schedules_exactly_once(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, redis: aioredis.Redis
) -> None:
    user, _ = await make_user(sessionmaker)
    ids = [
        await add_schedule(sessionmaker, user.id, interval_s=60, anchor_at=T0, next_fire_at=T0)
        for _ in range(40)
    ]
    small = settings.model_copy(update={"schedule_fire_batch_size": 3, "rate_limit_per_minute": 0})

    async def claimer() -> int:
        fired = 0
        while (counts := await fire_due(sessionmaker, redis, small, now=T0)).fired:
            fired += counts.fired
        return fired

    totals = await asyncio.gather(*(claimer() for _ in range(6)))

    assert sum(totals) == 40
    assert sum(1 for total in totals if total) > 1, "the claims did not run side by side"
    for schedule_id in ids:
        assert [run.tick_at for run in await runs_of(sessionmaker, schedule_id)] == [T0]
    async with sessionmaker() as session:
        assert len((await session.execute(select(Task))).scalars().all()) == 40


async def test_five_missed_ticks_make_one_run_under_run_once_and_a_skip_record_under_skip(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, redis: aioredis.Redis
) -> None:
    user, _ = await make_user(sessionmaker)
    first = T0 + timedelta(seconds=10)
    once = await add_schedule(
        sessionmaker, user.id, interval_s=10, anchor_at=T0, next_fire_at=first
    )
    skip = await add_schedule(
        sessionmaker, user.id, interval_s=10, anchor_at=T0, next_fire_at=first, missed="skip"
    )
    # Down from before the first tick until just after the fifth (t0+10 … t0+50).
    await fire_due(sessionmaker, redis, settings, now=T0 + timedelta(seconds=52))

    (run,) = await runs_of(sessionmaker, once)
    assert (run.tick_at, run.missed_ticks, run.skipped_reason) == (
        T0 + timedelta(seconds=50),
        4,
        None,
    )
    assert run.batch_id is not None
    (skipped,) = await runs_of(sessionmaker, skip)
    assert (skipped.tick_at, skipped.missed_ticks, skipped.skipped_reason) == (
        first,
        5,
        SKIPPED_MISSED,
    )
    assert skipped.batch_id is None
    for schedule_id in (once, skip):
        schedule = await schedule_row(sessionmaker, schedule_id)
        assert schedule.next_fire_at == T0 + timedelta(seconds=60)


async def test_a_daily_paris_schedule_across_both_daylight_saving_changes(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, redis: aioredis.Redis
) -> None:
    user, _ = await make_user(sessionmaker)
    # 02:30 Paris: absent on 2026-03-29, twice on 2026-10-25.
    spring = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 02:30 CET, i.e. 03:30 CEST
    schedule_id = await add_schedule(
        sessionmaker,
        user.id,
        cron="30 2 * * *",
        timezone="Europe/Paris",
        anchor_at=T0,
        next_fire_at=datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
    )
    ticks = []
    for now in (
        datetime(2026, 3, 28, 1, 30, 0, 300000, tzinfo=UTC),
        spring + timedelta(seconds=0.2),
    ):
        await fire_due(sessionmaker, redis, settings, now=now)
        ticks.append((await schedule_row(sessionmaker, schedule_id)).next_fire_at)
    assert ticks == [spring, datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]

    # Autumn: the fixed clock jumps to the eve of the change, then through both 02:30s.
    async with sessionmaker() as session, session.begin():
        row = await session.get(type(await schedule_row(sessionmaker, schedule_id)), schedule_id)
        assert row is not None
        row.next_fire_at = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    autumn = []
    for now in (
        datetime(2026, 10, 25, 0, 30, 1, tzinfo=UTC),
        datetime(2026, 10, 25, 1, 30, 1, tzinfo=UTC),
    ):
        counts = await fire_due(sessionmaker, redis, settings, now=now)
        assert counts.fired == 1
        autumn.append((await schedule_row(sessionmaker, schedule_id)).next_fire_at)
    assert autumn == [
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),
    ]
    assert [run.tick_at for run in await runs_of(sessionmaker, schedule_id)] == [
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
        spring,
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
    ]


async def test_a_run_beyond_the_clients_create_budget_is_recorded_as_skipped_and_the_next_tick_kept(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, redis: aioredis.Redis
) -> None:
    user, _ = await make_user(sessionmaker)
    tight = settings.model_copy(update={"rate_limit_per_minute": 1, "rate_limit_burst": 2})
    schedule_id = await add_schedule(
        sessionmaker,
        user.id,
        interval_s=60,
        anchor_at=T0,
        next_fire_at=T0,
        domains=("a.example.com", "b.example.com"),
    )
    await fire_due(sessionmaker, redis, tight, now=T0)
    second = await fire_due(sessionmaker, redis, tight, now=T0 + timedelta(minutes=1))

    assert second.skipped == {SKIPPED_RATE_LIMITED: 1}
    first_run, skipped = await runs_of(sessionmaker, schedule_id)
    assert first_run.batch_id is not None
    assert skipped.batch_id is None
    assert skipped.skipped_reason is not None
    assert skipped.skipped_reason.startswith(SKIPPED_RATE_LIMITED)
    schedule = await schedule_row(sessionmaker, schedule_id)
    assert schedule.next_fire_at == T0 + timedelta(minutes=2)


async def finish_tasks(
    sessionmaker: async_sessionmaker[AsyncSession], titles: dict[str, str]
) -> None:
    async with sessionmaker() as session, session.begin():
        tasks = (
            (await session.execute(select(Task).where(Task.status == TaskStatus.PENDING)))
            .scalars()
            .all()
        )
        for task in tasks:
            task.status = TaskStatus.SUCCEEDED
            task.result = {"https": {"status": 200, "title": titles[task.target_domain]}}
            task.finished_at = datetime.now(UTC)


async def test_an_ended_run_is_compared_with_the_last_and_a_changes_callback_has_only_changes(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, redis: aioredis.Redis
) -> None:
    user, _ = await make_user(sessionmaker)
    schedule_id = await add_schedule(
        sessionmaker,
        user.id,
        interval_s=60,
        anchor_at=T0,
        next_fire_at=T0,
        domains=("a.example.com", "b.example.com"),
        callback_url="https://hooks.example.com/changes",
        callback_changes_only=True,
    )
    await fire_due(sessionmaker, redis, settings, now=T0)
    await finish_tasks(sessionmaker, {"a.example.com": "A", "b.example.com": "B"})
    assert await report_ended(sessionmaker) == 1
    await fire_due(sessionmaker, redis, settings, now=T0 + timedelta(minutes=1))
    assert await report_ended(sessionmaker) == 0, "a run whose batch has not ended was reported"
    await finish_tasks(sessionmaker, {"a.example.com": "A", "b.example.com": "B, defaced"})
    assert await report_ended(sessionmaker) == 1

    first, second = await runs_of(sessionmaker, schedule_id)
    assert first.changes == []
    assert second.changes == [
        {"domain": "b.example.com", "changed": {"title": {"before": "B", "after": "B, defaced"}}}
    ]
    async with sessionmaker() as session:
        deliveries = (await session.execute(select(Delivery))).scalars().all()
    # No batch callback (changes only), and none for the first run, where nothing changed.
    (delivery,) = deliveries
    assert delivery.url == "https://hooks.example.com/changes"
    assert delivery.payload["event"] == "schedule.run.changed"
    assert delivery.payload["changes"] == second.changes
    assert delivery.payload["run"]["batch_id"] == str(second.batch_id)


async def test_a_schedule_row_that_cannot_fire_is_stopped_and_the_others_fire(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, redis: aioredis.Redis
) -> None:
    user, _ = await make_user(sessionmaker)
    bad_cron = await add_schedule(
        sessionmaker, user.id, cron="not a cron", anchor_at=T0, next_fire_at=T0
    )
    no_domain = await add_schedule(
        sessionmaker, user.id, interval_s=60, anchor_at=T0, next_fire_at=T0, domains=()
    )
    good = await add_schedule(sessionmaker, user.id, interval_s=60, anchor_at=T0, next_fire_at=T0)

    counts = await fire_due(sessionmaker, redis, settings, now=T0)

    assert counts.fired == 1
    assert counts.skipped == {"invalid_schedule": 2}
    assert [run.tick_at for run in await runs_of(sessionmaker, good)] == [T0]
    for stopped in (bad_cron, no_domain):
        assert (await schedule_row(sessionmaker, stopped)).next_fire_at is None
    later = await fire_due(sessionmaker, redis, settings, now=T0 + timedelta(minutes=5))
    assert (later.fired, later.skipped) == (1, {})


async def test_a_revoked_clients_schedules_stop(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, redis: aioredis.Redis
) -> None:
    user, _ = await make_user(sessionmaker)
    schedule_id = await add_schedule(
        sessionmaker, user.id, interval_s=60, anchor_at=T0, next_fire_at=T0
    )
    async with sessionmaker() as session, session.begin():
        assert await users.revoke_user(session, user.name)

    counts = await fire_due(sessionmaker, redis, settings, now=T0)

    assert (counts.fired, counts.skipped) == (0, {"client_revoked": 1})
    assert await runs_of(sessionmaker, schedule_id) == []
    assert (await schedule_row(sessionmaker, schedule_id)).next_fire_at is None


async def test_the_clients_own_creates_and_its_schedule_runs_draw_on_one_bucket(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, redis: aioredis.Redis
) -> None:
    user, token = await make_user(sessionmaker)
    tight = settings.model_copy(update={"rate_limit_per_minute": 1, "rate_limit_burst": 3})
    schedule_id = await add_schedule(
        sessionmaker, user.id, interval_s=60, anchor_at=T0, next_fire_at=T0
    )
    async with api_client(tight) as client:
        body = {"tasks": [{"target_domain": f"d{n}.example.com"} for n in range(3)]}
        created = await client.post(
            "/api/v1/batches", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert created.status_code == 201, created.text

    counts = await fire_due(sessionmaker, redis, tight, now=T0)

    assert counts.skipped == {SKIPPED_RATE_LIMITED: 1}
    (run,) = await runs_of(sessionmaker, schedule_id)
    assert run.batch_id is None
