"""Fair dispatch: each client's lane holds a bounded window in the broker, refilled as
workers take messages, in turns across clients, against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relay_service.publisher import DramatiqPublisher
from relay_service.relay import Relay
from shared import keys
from shared.db import batches, outbox, tasks
from shared.dramatiq_broker import create_broker
from shared.messages import scan_entry
from shared.settings import Settings
from tests.helpers import eventually, make_user

QUEUE = "scans"
WINDOW = 8


@pytest.fixture
def broker(settings: Settings) -> Iterator[RedisBroker]:
    broker = create_broker(settings, middleware=[])
    yield broker
    broker.close()


@pytest.fixture
def windowed(settings: Settings) -> Settings:
    return settings.model_copy(update={"relay_client_window": WINDOW})


def relay_for(engine: AsyncEngine, broker: RedisBroker, settings: Settings) -> Relay:
    return Relay(engine, DramatiqPublisher(broker), settings)


async def submit_batch(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: int, count: int
) -> list[uuid.UUID]:
    """A batch of `count` tasks in submission order, written as the API writes one."""
    task_ids = [uuid.uuid4() for _ in range(count)]
    new = batches.NewBatch(
        id=uuid.uuid4(),
        user_id=user_id,
        config={},
        max_attempts=3,
        request_hash=uuid.uuid4().hex,
        idempotency_key=None,
        domains=[f"b{index}.example.com" for index in range(count)],
        entries=[scan_entry(task_id, QUEUE) for task_id in task_ids],
    )
    async with sessionmaker() as session, session.begin():
        assert await batches.insert_batch(session, new)
    return task_ids


async def submit_task(sessionmaker: async_sessionmaker[AsyncSession], user_id: int) -> uuid.UUID:
    task_id = uuid.uuid4()
    new = tasks.NewTask(user_id=user_id, target_domain="one.example.com", config={}, max_attempts=3)
    entry = scan_entry(task_id, QUEUE)
    async with sessionmaker() as session, session.begin():
        assert await tasks.insert_task_with_message(session, task_id, new, entry)
    return task_id


def broker_task_ids(redis_client: redis.Redis) -> list[str]:
    """Task ids of the messages in the broker's queue, in the order workers take them."""
    stored = redis_client.hgetall(f"{keys.broker_queue_key(QUEUE)}.msgs")
    by_id = {key.decode(): json.loads(raw) for key, raw in stored.items()}
    order = [raw.decode() for raw in redis_client.lrange(keys.broker_queue_key(QUEUE), 0, -1)]
    # Dramatiq's enqueue pushes on the right and its consumers pop from the left.
    return [by_id[message]["kwargs"]["task_id"] for message in order]


async def take(sessionmaker: async_sessionmaker[AsyncSession], task_ids: list[str]) -> None:
    """What a worker's claim does to the window: queued tasks start running."""
    async with sessionmaker() as session, session.begin():
        await session.execute(
            text("UPDATE tasks SET status = 'running' WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": task_ids},
        )


async def test_another_clients_scan_goes_out_at_once_beside_a_large_batch(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    windowed: Settings,
    redis_client: redis.Redis,
) -> None:
    bulk, _ = await make_user(sessionmaker, "bulk")
    other, _ = await make_user(sessionmaker, "other")
    await submit_batch(sessionmaker, bulk.id, 500)
    single = await submit_task(sessionmaker, other.id)

    await relay_for(engine, broker, windowed).drain()

    in_broker = broker_task_ids(redis_client)
    assert len(in_broker) == WINDOW + 1, "the batch waits in the outbox beyond its window"
    assert in_broker[0] == str(single), "the single scan is the next a worker takes"


async def test_a_clients_single_create_is_not_queued_behind_its_own_batch(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    windowed: Settings,
    redis_client: redis.Redis,
) -> None:
    user, _ = await make_user(sessionmaker)
    await submit_batch(sessionmaker, user.id, 100)
    relay = relay_for(engine, broker, windowed)
    await relay.drain()
    assert relay.window_full
    single = await submit_task(sessionmaker, user.id)

    await relay.drain()

    in_broker = broker_task_ids(redis_client)
    assert len(in_broker) == WINDOW + 1
    assert str(single) in in_broker


async def test_the_window_refills_what_workers_took_once_half_of_it_is_free(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    windowed: Settings,
    redis_client: redis.Redis,
) -> None:
    user, _ = await make_user(sessionmaker)
    batch = await submit_batch(sessionmaker, user.id, 50)
    relay = relay_for(engine, broker, windowed)
    assert await relay.drain() == WINDOW
    assert await relay.drain() == 0
    await take(sessionmaker, broker_task_ids(redis_client)[:3])
    assert await relay.drain() == 0, "less than half the window is free"
    await take(sessionmaker, broker_task_ids(redis_client)[3:5])

    assert await relay.drain() == 5
    published = broker_task_ids(redis_client)
    assert published == [str(task_id) for task_id in batch[: WINDOW + 5]], (
        "a client's scans keep their order"
    )


async def test_clients_take_turns_within_a_relay_batch(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    first, _ = await make_user(sessionmaker, "first")
    second, _ = await make_user(sessionmaker, "second")
    first_ids = {str(t) for t in await submit_batch(sessionmaker, first.id, 200)}
    await submit_batch(sessionmaker, second.id, 200)
    small = settings.model_copy(update={"relay_batch_size": 10, "relay_client_window": 64})

    await relay_for(engine, broker, small).run_once()

    owners = ["first" if task in first_ids else "second" for task in broker_task_ids(redis_client)]
    assert sorted(owners) == ["first"] * 5 + ["second"] * 5
    assert all(a != b for a, b in zip(owners[::2], owners[1::2], strict=True)), owners


async def test_concurrent_relays_fill_a_window_at_most_once_each_and_never_twice_a_row(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    windowed: Settings,
    redis_client: redis.Redis,
) -> None:
    user, _ = await make_user(sessionmaker)
    await submit_batch(sessionmaker, user.id, 300)
    relays = [relay_for(engine, broker, windowed) for _ in range(4)]

    for _ in range(5):
        await asyncio.gather(*(relay.drain() for relay in relays))

    # A relay cannot see another's batch before it commits: each may fill the window once.
    in_broker = broker_task_ids(redis_client)
    assert WINDOW <= len(in_broker) <= len(relays) * WINDOW
    assert len(set(in_broker)) == len(in_broker)


async def test_a_relay_holding_a_clients_rows_does_not_stop_another_from_publishing_the_next(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    windowed: Settings,
    redis_client: redis.Redis,
) -> None:
    user, _ = await make_user(sessionmaker)
    batch = await submit_batch(sessionmaker, user.id, 50)
    async with engine.connect() as frozen, frozen.begin():
        # A relay frozen mid-batch: it holds the client's oldest rows, uncommitted.
        held = await outbox.claim_batch(frozen, 100, WINDOW)
        assert len(held.messages) == WINDOW

        assert await relay_for(engine, broker, windowed).drain() == WINDOW

    assert broker_task_ids(redis_client) == [str(t) for t in batch[WINDOW : 2 * WINDOW]]


async def test_a_running_relay_refills_a_full_window_without_being_woken(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    windowed: Settings,
    redis_client: redis.Redis,
) -> None:
    user, _ = await make_user(sessionmaker)
    await submit_batch(sessionmaker, user.id, 40)
    relay = relay_for(engine, broker, windowed)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    taken: set[str] = set()
    try:

        async def all_published() -> bool:
            # A worker taking every message as it arrives; nobody calls relay.wake().
            fresh = [t for t in broker_task_ids(redis_client) if t not in taken]
            await take(sessionmaker, fresh)
            taken.update(fresh)
            return len(taken) == 40

        await eventually(all_published, "every message published", deadline_s=20)
        assert redis_client.llen(keys.broker_queue_key(QUEUE)) <= 40
    finally:
        stop.set()
        relay.wake()
        await running


async def test_redis_holds_the_window_not_the_backlog(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    user, _ = await make_user(sessionmaker)
    for _ in range(5):
        await submit_batch(sessionmaker, user.id, 1000)

    await relay_for(engine, broker, settings).drain()

    assert redis_client.llen(keys.broker_queue_key(QUEUE)) == settings.relay_client_window
