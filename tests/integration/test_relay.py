"""The relay cycle against a real PostgreSQL and the real Dramatiq Redis broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from relay_service.publisher import DramatiqPublisher
from relay_service.relay import Relay
from shared import keys
from shared.db import outbox, tasks
from shared.db.models import OutboxMessage, Task
from shared.dramatiq_broker import create_broker
from shared.embedded import free_port
from shared.messages import scan_entry
from shared.settings import Settings
from tests.helpers import count_rows, make_user

QUEUE = "scans"


@pytest.fixture
def broker(settings: Settings) -> Iterator[RedisBroker]:
    broker = create_broker(settings, middleware=[])
    yield broker
    broker.close()


@pytest.fixture
def relay(engine: AsyncEngine, broker: RedisBroker, settings: Settings) -> Relay:
    return Relay(engine, DramatiqPublisher(broker), settings)


def queued_message_ids(redis_client: redis.Redis) -> list[str]:
    """Message ids Dramatiq holds in the queue, decoded from the broker's own storage."""
    stored = redis_client.hgetall(f"{keys.broker_queue_key(QUEUE)}.msgs")
    return sorted(json.loads(raw)["message_id"] for raw in stored.values())


async def create_task(session: AsyncSession, user_id: int, domain: str = "example.com") -> Task:
    task_id = uuid.uuid4()
    new = tasks.NewTask(user_id=user_id, target_domain=domain, config={}, max_attempts=3)
    task = await tasks.insert_task_with_message(session, task_id, new, scan_entry(task_id, QUEUE))
    assert task is not None
    return task


async def test_relay_publishes_nothing_for_uncommitted_rows_and_the_row_after_commit(
    sessionmaker: async_sessionmaker[AsyncSession], relay: Relay, redis_client: redis.Redis
) -> None:
    user, _ = await make_user(sessionmaker)
    async with sessionmaker() as session:
        transaction = await session.begin()
        task = await create_task(session, user.id)
        assert await relay.run_once() == 0
        assert queued_message_ids(redis_client) == []
        await transaction.commit()

    assert await relay.run_once() == 1
    async with sessionmaker() as session:
        message = (await session.execute(select(OutboxMessage))).scalar_one()
        stored = await session.get(Task, task.id)
    assert queued_message_ids(redis_client) == [str(message.message_id)]
    assert message.published_at is not None
    assert stored is not None
    assert stored.status == "queued"
    assert stored.queued_at is not None


async def test_rolled_back_create_leaves_no_task_and_no_message(
    sessionmaker: async_sessionmaker[AsyncSession], relay: Relay, redis_client: redis.Redis
) -> None:
    user, _ = await make_user(sessionmaker)

    async def create_then_fail() -> None:
        async with sessionmaker() as session, session.begin():
            await create_task(session, user.id)
            raise RuntimeError("the request failed after the insert")

    with pytest.raises(RuntimeError):
        await create_then_fail()
    assert await count_rows(sessionmaker) == (0, 0)
    assert await relay.run_once() == 0
    assert queued_message_ids(redis_client) == []


async def test_batches_drain_in_id_order_and_each_row_is_published_once(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    # One client whose window holds them all (windows: test_relay_fairness.py).
    wide = settings.model_copy(update={"relay_client_window": 1000})
    relay = Relay(engine, DramatiqPublisher(broker), wide)
    user, _ = await make_user(sessionmaker)
    async with sessionmaker() as session, session.begin():
        for index in range(250):
            await create_task(session, user.id, f"s{index}.example.com")
    assert await relay.drain() == 250
    assert await relay.drain() == 0
    assert len(queued_message_ids(redis_client)) == 250
    assert redis_client.llen(keys.broker_queue_key(QUEUE)) == 250


async def test_concurrent_relays_share_rows_without_publishing_twice(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    user, _ = await make_user(sessionmaker)
    async with sessionmaker() as session, session.begin():
        for index in range(300):
            await create_task(session, user.id, f"c{index}.example.com")
    small = settings.model_copy(update={"relay_batch_size": 20, "relay_client_window": 1000})
    relays = [Relay(engine, DramatiqPublisher(broker), small) for _ in range(3)]
    claimed = await asyncio.gather(*(r.drain() for r in relays))
    assert sum(claimed) == 300
    assert redis_client.llen(keys.broker_queue_key(QUEUE)) == 300
    assert len(set(queued_message_ids(redis_client))) == 300


async def test_broker_down_keeps_rows_unpublished_with_backoff_then_they_drain(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    relay: Relay,
    redis_client: redis.Redis,
) -> None:
    user, _ = await make_user(sessionmaker)
    async with sessionmaker() as session, session.begin():
        await create_task(session, user.id)
    from pydantic import SecretStr

    dead_broker = create_broker(
        settings.model_copy(update={"broker_url": SecretStr(f"redis://127.0.0.1:{free_port()}/0")}),
        middleware=[],
    )
    failing = Relay(engine, DramatiqPublisher(dead_broker), settings)
    assert await failing.run_once() == 1
    async with sessionmaker() as session:
        row = (await session.execute(select(OutboxMessage))).scalar_one()
        task = (await session.execute(select(Task))).scalar_one()
    assert row.published_at is None
    assert row.dead_at is None
    assert row.publish_attempts == 1
    assert row.last_error is not None
    assert "broker unavailable" in row.last_error
    assert row.available_at > row.created_at
    assert task.status == "pending"
    # Not due yet: the backoff holds it back even from a healthy relay.
    assert await relay.run_once() == 0

    async with sessionmaker() as session, session.begin():
        await session.execute(update(OutboxMessage).values(available_at=row.created_at))
    assert await relay.run_once() == 1
    assert queued_message_ids(redis_client) == [str(row.message_id)]


async def test_unknown_actor_goes_dead_and_fails_its_task_with_the_reason(
    sessionmaker: async_sessionmaker[AsyncSession], relay: Relay, redis_client: redis.Redis
) -> None:
    user, _ = await make_user(sessionmaker)
    async with sessionmaker() as session, session.begin():
        task = await create_task(session, user.id)
        await session.execute(update(OutboxMessage).values(actor="no_such_actor"))
    assert await relay.run_once() == 1
    async with sessionmaker() as session:
        row = (await session.execute(select(OutboxMessage))).scalar_one()
        stored = await session.get(Task, task.id)
    assert row.dead_at is not None
    assert row.last_error == "unknown actor 'no_such_actor'"
    assert stored is not None
    assert stored.status == "failed"
    assert stored.error == "unknown actor 'no_such_actor'"
    assert queued_message_ids(redis_client) == []
    assert await relay.run_once() == 0


async def test_only_the_transaction_that_marks_rows_published_skips_the_wal_flush_wait(
    sessionmaker: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    user, _ = await make_user(sessionmaker)
    async with sessionmaker() as session, session.begin():
        await create_task(session, user.id)
    async with engine.connect() as connection:
        async with connection.begin():
            claim = await outbox.claim_batch(connection, 10, 10)
            assert await _synchronous_commit(connection) == "on"
            published = [outbox.PublishedMessage(m.id, str(uuid.uuid4())) for m in claim.messages]
            await outbox.mark_published(connection, published)
            assert await _synchronous_commit(connection) == "off"
        # Set for that transaction only: the connection goes back to the pool as it came.
        assert await _synchronous_commit(connection) == "on"
    async with sessionmaker() as session:
        task = (await session.execute(select(Task))).scalar_one()
    assert task.status == "queued"


async def _synchronous_commit(connection: AsyncConnection) -> str:
    return str((await connection.execute(text("SHOW synchronous_commit"))).scalar_one())
