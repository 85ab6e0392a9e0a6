"""Maintenance against a real PostgreSQL: re-dispatch orphans once, prune, elect one leader."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.leader import APPLICATION_NAME, LeaderElection, MaintenanceJobs
from shared import maintenance_jobs
from shared.db.models import OutboxMessage, Task
from shared.settings import Settings
from tests.relay_support import create_tasks, task_states, terminate_backends

MINUTE = timedelta(minutes=1)


@pytest.fixture
def maintenance_settings(settings: Settings) -> Settings:
    # Batches of 2 make every loop run more than once.
    return settings.model_copy(
        update={
            "queued_stale_s": 600.0,
            "outbox_retention_s": 7 * 24 * 3600.0,
            "relay_redispatch_batch_size": 2,
            "relay_prune_batch_size": 2,
        }
    )


async def set_task(
    sessionmaker: async_sessionmaker[AsyncSession], task_id: uuid.UUID, **values: Any
) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(update(Task).where(Task.id == task_id).values(**values))


def running(attempts: int, expires_in: timedelta) -> dict[str, Any]:
    return {
        "status": "running",
        "attempts": attempts,
        "lease_owner": "worker-1",
        "lease_token": uuid.uuid4(),
        "lease_expires_at": func.now() + expires_in,
    }


def queued(attempts: int, since: timedelta) -> dict[str, Any]:
    return {"status": "queued", "attempts": attempts, "queued_at": func.now() - since}


async def messages_per_task(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[Any, int]:
    async with sessionmaker() as session:
        stmt = select(OutboxMessage.task_id, func.count()).group_by(OutboxMessage.task_id)
        return {row[0]: row[1] for row in (await session.execute(stmt)).all()}


async def redispatch_counts(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[Any, int]:
    async with sessionmaker() as session:
        rows = (await session.execute(select(Task.id, Task.redispatches))).all()
    return {row[0]: row[1] for row in rows}


async def test_orphans_are_sent_again_once_only_those_that_ran_out_of_attempts_fail(
    sessionmaker: async_sessionmaker[AsyncSession], maintenance_settings: Settings
) -> None:
    expired, exhausted, alive, stale, stale_late, located, recent, *others = await create_tasks(
        sessionmaker, 10
    )
    await set_task(sessionmaker, expired, **running(1, -MINUTE))
    await set_task(sessionmaker, exhausted, **running(3, -MINUTE))
    await set_task(sessionmaker, alive, **running(1, MINUTE))
    # Queued long past the threshold with nothing to locate their message by: the last-resort
    # sweep sends them again, however many attempts they have had, and never fails them.
    await set_task(sessionmaker, stale, **queued(0, 20 * MINUTE))
    await set_task(sessionmaker, stale_late, **queued(2, 20 * MINUTE))
    # Just as old, but its message's broker id is known: the broker check's business.
    await set_task(sessionmaker, located, **queued(0, 20 * MINUTE))
    async with sessionmaker() as session, session.begin():
        await session.execute(
            text(
                "UPDATE outbox SET published_at = now(), broker_message_id = 'in-the-broker'"
                " WHERE task_id = :id"
            ),
            {"id": located},
        )
        await session.execute(
            text(
                "UPDATE tasks SET queued_outbox_id = (SELECT id FROM outbox WHERE task_id = :id)"
                " WHERE id = :id"
            ),
            {"id": located},
        )
    await set_task(sessionmaker, recent, **queued(0, MINUTE))
    for task_id in others:
        await set_task(sessionmaker, task_id, **running(1, -MINUTE))
    before = await task_states(sessionmaker)

    planned = await maintenance_jobs.redispatch_orphans(
        sessionmaker, maintenance_settings, dry_run=True
    )
    assert await task_states(sessionmaker) == before
    # Two runs at once (a relay leader and an operator): each orphan is handled once.
    first, second = await asyncio.gather(
        maintenance_jobs.redispatch_orphans(sessionmaker, maintenance_settings),
        maintenance_jobs.redispatch_orphans(sessionmaker, maintenance_settings),
    )
    done = {key: first[key] + second[key] for key in first}
    expected = {"lease_expired": 1 + len(others), "lease_expired_failed": 1, "unlocated": 2}
    assert planned == expected
    assert done == expected
    assert await maintenance_jobs.redispatch_orphans(
        sessionmaker, maintenance_settings
    ) == dict.fromkeys(expected, 0)

    states = await task_states(sessionmaker)
    # A re-dispatch is not an attempt: attempts count runs.
    assert states[expired] == ("pending", 1, "lease expired; sent again")
    assert states[exhausted] == ("failed", 3, "lease expired after 3 attempts")
    assert states[alive] == before[alive]
    assert states[stale] == ("pending", 0, None)
    assert states[stale_late] == ("pending", 2, None)
    assert states[located] == before[located]
    assert states[recent] == before[recent]
    redispatches = await redispatch_counts(sessionmaker)
    sent_again = {expired, stale, stale_late, *others}
    for task_id, count in redispatches.items():
        assert count == (1 if task_id in sent_again else 0), task_id
    messages = await messages_per_task(sessionmaker)
    for task_id in sent_again:
        assert messages[task_id] == 2, "one new message per task sent again"
    for task_id in (exhausted, alive, located, recent):
        assert messages[task_id] == 1
    async with sessionmaker() as session:
        leases = (
            await session.execute(select(Task.lease_token).where(Task.id.in_([expired, *others])))
        ).scalars()
        assert set(leases) == {None}


async def test_pruning_removes_only_published_rows_older_than_the_retention(
    sessionmaker: async_sessionmaker[AsyncSession], maintenance_settings: Settings
) -> None:
    await create_tasks(sessionmaker, 8)
    old, recent = timedelta(days=10), timedelta(hours=1)
    plan = {1: ("published", old), 2: ("published", old), 3: ("published", old)}
    plan |= {4: ("published", old), 5: ("published", old), 6: ("published", recent)}
    plan |= {7: ("dead", old), 8: ("unpublished", old)}
    async with sessionmaker() as session, session.begin():
        for outbox_id, (state, age) in plan.items():
            values: dict[str, Any] = {"created_at": func.now() - age}
            if state != "unpublished":
                values[f"{state}_at"] = func.now() - age
            await session.execute(
                update(OutboxMessage).where(OutboxMessage.id == outbox_id).values(**values)
            )

    dry = await maintenance_jobs.prune_published(sessionmaker, maintenance_settings, dry_run=True)
    assert dry == {"outbox_pruned": 5}
    assert await maintenance_jobs.prune_published(sessionmaker, maintenance_settings) == dry
    assert await maintenance_jobs.prune_published(sessionmaker, maintenance_settings) == {
        "outbox_pruned": 0
    }
    async with sessionmaker() as session:
        left = (await session.execute(select(OutboxMessage.id))).scalars().all()
    assert sorted(left) == [6, 7, 8]


async def connection_states(sessionmaker: async_sessionmaker[AsyncSession]) -> list[str]:
    stmt = text("SELECT state FROM pg_stat_activity WHERE application_name = :name")
    async with sessionmaker() as session:
        return list((await session.execute(stmt, {"name": APPLICATION_NAME})).scalars())


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(f"scan_outbox_{name}")


async def test_one_leader_at_a_time_and_its_lock_passes_on_when_its_connection_dies(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    first, second = LeaderElection(settings), LeaderElection(settings)
    try:
        assert await first.check()
        assert not await second.check()
        assert await first.check(), "the leader keeps the lead"
        # The lock lives in the session, not in a transaction left open.
        assert await connection_states(sessionmaker) == ["idle", "idle"]

        await terminate_backends(sessionmaker, APPLICATION_NAME)
        assert not await second.check(), "its own connection died too"
        assert await second.check(), "a new connection, and the lock is free"
        assert not await first.check()
        assert not await first.check()
        assert await second.check()

        await second.release()
        assert await first.check()
    finally:
        await first.release()
        await second.release()


async def test_only_the_leader_reports_the_backlog(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await create_tasks(sessionmaker, 4)
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(OutboxMessage).where(OutboxMessage.id == 1).values(dead_at=func.now())
        )
    election = LeaderElection(settings)
    jobs = MaintenanceJobs(sessionmaker, settings, election, asyncio.Event())
    try:
        await jobs.check_leader()
        await jobs.refresh_gauges()
        assert gauge("relay_leader") == 1
        assert gauge("outbox_backlog") == 3
        assert gauge("outbox_dead") == 1
        age = gauge("outbox_oldest_unpublished_age_seconds")
        assert age is not None
        assert age >= 0

        await terminate_backends(sessionmaker, APPLICATION_NAME)
        await jobs.check_leader()
        assert gauge("relay_leader") == 0
        assert gauge("outbox_backlog") == 0
    finally:
        await election.release()
