"""The relay leader's broker check against real PostgreSQL and Redis: it sends a queued task
again only when it knows the task's message is gone, and gives dead consumers' messages back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.publisher import DramatiqPublisher
from relay_service.relay import Relay
from relay_service.whereabouts import BrokerWatch
from shared import dramatiq_private, keys
from shared.db import recovery
from shared.db.models import OutboxMessage, Task
from shared.dramatiq_broker import create_broker
from shared.settings import Settings
from tests.relay_support import QUEUE, create_tasks
from tests.workers import claim_one

MESSAGES_KEY = keys.broker_messages_key(QUEUE)
QUEUE_KEY = keys.broker_queue_key(QUEUE)
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class TaskFacts:
    status: str
    attempts: int
    redispatches: int
    queued_outbox_id: int | None
    messages: int


@pytest.fixture
def watch_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"queued_check_floor_s": 5.0, "broker_heartbeat_timeout_s": 15.0}
    )


@pytest.fixture
def broker(watch_settings: Settings) -> Iterator[RedisBroker]:
    """The relay's broker: no middleware, bounded Redis calls."""
    relay_broker = create_broker(watch_settings, middleware=[], socket_timeout_s=5)
    yield relay_broker
    relay_broker.client.connection_pool.disconnect()


async def queued_tasks(
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    settings: Settings,
    count: int,
) -> list[uuid.UUID]:
    """`count` tasks published by a real relay: queued, each on its message in the broker."""
    ids = await create_tasks(sessionmaker, count)
    relay = Relay(sessionmaker.kw["bind"], DramatiqPublisher(broker), settings)
    assert await relay.drain() == count
    return ids


async def facts(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[uuid.UUID, TaskFacts]:
    async with sessionmaker() as session:
        messages = dict(
            (
                await session.execute(
                    select(OutboxMessage.task_id, func.count()).group_by(OutboxMessage.task_id)
                )
            ).all()
        )
        rows = (
            await session.execute(
                select(
                    Task.id, Task.status, Task.attempts, Task.redispatches, Task.queued_outbox_id
                )
            )
        ).all()
    return {row[0]: TaskFacts(*row[1:], messages=messages[row[0]]) for row in rows}


async def broker_id_of(sessionmaker: async_sessionmaker[AsyncSession], task_id: uuid.UUID) -> str:
    """The id the broker stores the message `task_id` waits on under."""
    async with sessionmaker() as session:
        stmt = (
            select(OutboxMessage.broker_message_id)
            .join(Task, Task.queued_outbox_id == OutboxMessage.id)
            .where(Task.id == task_id)
        )
        broker_id = (await session.execute(stmt)).scalar_one()
    assert broker_id is not None
    return broker_id


async def lose_message(
    sessionmaker: async_sessionmaker[AsyncSession], client: redis.Redis, task_id: uuid.UUID
) -> None:
    """The broker forgets the task's message (acked without a claim, dead-lettered, lost)."""
    assert client.hdel(MESSAGES_KEY, await broker_id_of(sessionmaker, task_id)) == 1


async def queued_since(
    sessionmaker: async_sessionmaker[AsyncSession], ago: timedelta, *ids: uuid.UUID
) -> None:
    async with sessionmaker() as session, session.begin():
        stmt = update(Task).where(Task.id.in_(ids)).values(queued_at=func.now() - ago)
        await session.execute(stmt)


async def stored_state(sessionmaker: async_sessionmaker[AsyncSession]) -> recovery.BrokerState:
    async with sessionmaker() as session:
        state = await recovery.get_broker_state(session)
    assert state is not None
    return state


def epoch_in(client: redis.Redis) -> str | None:
    value = client.get(keys.BROKER_EPOCH_KEY)
    return value.decode() if isinstance(value, bytes) else None


async def test_the_first_check_creates_the_epoch_and_sends_nothing_again(
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    watch_settings: Settings,
    redis_client: redis.Redis,
) -> None:
    await queued_tasks(sessionmaker, broker, watch_settings, 5)
    before = await facts(sessionmaker)
    watch = BrokerWatch(sessionmaker, broker, watch_settings)

    counts = await watch.check()

    assert (counts.broker_reset, counts.message_lost) == (0, 0)
    assert await facts(sessionmaker) == before
    epoch = epoch_in(redis_client)
    assert epoch is not None
    state = await stored_state(sessionmaker)
    assert state.epoch == epoch
    assert state.run_id == redis_client.info("server")["run_id"]
    assert not watch.full_walk, "the first check walked every queued task"
    # Nothing changed since: the next check finds everything where it was.
    counts = await watch.check()
    assert (counts.broker_reset, counts.message_lost) == (0, 0)
    assert epoch_in(redis_client) == epoch


async def test_the_first_check_adopts_an_epoch_already_in_the_broker(
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    watch_settings: Settings,
    redis_client: redis.Redis,
) -> None:
    await queued_tasks(sessionmaker, broker, watch_settings, 3)
    before = await facts(sessionmaker)
    redis_client.set(keys.BROKER_EPOCH_KEY, "written-by-another-leader")

    counts = await BrokerWatch(sessionmaker, broker, watch_settings).check()

    assert (counts.broker_reset, counts.message_lost) == (0, 0)
    assert await facts(sessionmaker) == before
    assert epoch_in(redis_client) == "written-by-another-leader"
    assert (await stored_state(sessionmaker)).epoch == "written-by-another-leader"


async def test_a_lost_epoch_sends_every_queued_task_again_without_charging_attempts(
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    watch_settings: Settings,
    redis_client: redis.Redis,
) -> None:
    *queued, running = await queued_tasks(sessionmaker, broker, watch_settings, 5)
    retried = queued[0]
    async with sessionmaker() as session, session.begin():
        # One had run before (a retry after an infrastructure error), one is running now.
        await session.execute(update(Task).where(Task.id == retried).values(attempts=1))
        await claim_one(session, running, "worker", 60)
    watch = BrokerWatch(sessionmaker, broker, watch_settings)
    await watch.check()
    old_epoch = epoch_in(redis_client)
    before = await facts(sessionmaker)

    # The broker lost its data (a restart without persistence, FLUSHALL): the epoch with it.
    redis_client.delete(keys.BROKER_EPOCH_KEY)
    counts = await watch.check()

    assert (counts.broker_reset, counts.message_lost) == (len(queued), 0)
    after = await facts(sessionmaker)
    for task_id in queued:
        was = before[task_id]
        assert after[task_id] == TaskFacts("pending", was.attempts, 1, None, 2), task_id
    assert after[retried].attempts == 1
    assert after[running] == before[running]
    new_epoch = epoch_in(redis_client)
    assert new_epoch is not None
    assert new_epoch != old_epoch
    assert (await stored_state(sessionmaker)).epoch == new_epoch
    # Once only: the next check knows the new epoch.
    counts = await watch.check()
    assert (counts.broker_reset, counts.message_lost) == (0, 0)


async def test_a_restart_that_kept_the_data_sends_nothing_again_but_checks_every_task_next(
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    watch_settings: Settings,
    redis_client: redis.Redis,
) -> None:
    watch = BrokerWatch(sessionmaker, broker, watch_settings)
    await watch.check()
    young = (await queued_tasks(sessionmaker, broker, watch_settings, 1))[0]
    await lose_message(sessionmaker, redis_client, young)
    state = await stored_state(sessionmaker)
    async with sessionmaker() as session, session.begin():
        # What the leader remembers of a broker process that is gone now.
        await recovery.set_broker_state(session, recovery.BrokerState(state.epoch, "earlier-run"))

    counts = await watch.check()

    # Not a data loss (the epoch is there), but the walk checked even the young task.
    assert (counts.broker_reset, counts.message_lost) == (0, 1)
    assert (await facts(sessionmaker))[young].status == "pending"
    assert (await stored_state(sessionmaker)).run_id == redis_client.info("server")["run_id"]


async def test_the_walk_sends_again_only_tasks_whose_message_is_gone(
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    watch_settings: Settings,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone, present, raced = await queued_tasks(sessionmaker, broker, watch_settings, 3)
    watch = BrokerWatch(sessionmaker, broker, watch_settings)
    await watch.check()
    await queued_since(sessionmaker, HOUR, gone, present, raced)
    for task_id in (gone, raced):
        await lose_message(sessionmaker, redis_client, task_id)
    before = await facts(sessionmaker)
    raced_tokens: list[uuid.UUID] = []
    loop = asyncio.get_running_loop()
    real_missing = watch._missing

    async def claim_raced() -> None:
        async with sessionmaker() as session, session.begin():
            raced_tokens.append(await claim_one(session, raced, "quick", 60))

    def missing_then_claimed(page: list[recovery.QueuedMessage]) -> list[recovery.QueuedMessage]:
        # A worker claims `raced` between the broker's answer and the re-dispatch.
        found = real_missing(page)
        asyncio.run_coroutine_threadsafe(claim_raced(), loop).result(timeout=10)
        return found

    monkeypatch.setattr(watch, "_missing", missing_then_claimed)
    counts = await watch.check()

    assert (counts.broker_reset, counts.message_lost) == (0, 1)
    after = await facts(sessionmaker)
    assert after[gone] == TaskFacts("pending", 0, 1, None, 2)
    assert after[present] == before[present]
    assert after[raced] == TaskFacts("running", 1, 0, before[raced].queued_outbox_id, 1)
    async with sessionmaker() as session:
        token = (await session.execute(select(Task.lease_token).where(Task.id == raced))).scalar()
    assert [token] == raced_tokens


async def test_a_task_younger_than_the_floor_is_checked_only_by_a_full_walk(
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    watch_settings: Settings,
    redis_client: redis.Redis,
) -> None:
    watch = BrokerWatch(sessionmaker, broker, watch_settings)
    await watch.check()
    young, old = await queued_tasks(sessionmaker, broker, watch_settings, 2)
    await queued_since(sessionmaker, HOUR, old)
    for task_id in (young, old):
        await lose_message(sessionmaker, redis_client, task_id)

    counts = await watch.check()

    # Its message may be on its way to a worker this very moment: not checked yet.
    assert counts.message_lost == 1
    states = await facts(sessionmaker)
    assert (states[young].status, states[old].status) == ("queued", "pending")

    # A new leader has not watched the broker: its first walk checks every queued task.
    counts = await BrokerWatch(sessionmaker, broker, watch_settings).check()
    assert counts.message_lost == 1
    assert (await facts(sessionmaker))[young] == TaskFacts("pending", 0, 1, None, 2)


def fetch_as(broker: RedisBroker, consumer_id: str, at_ms: int) -> None:
    """What a Dramatiq consumer named `consumer_id` does to take one message at `at_ms`: the
    message id moves from the queue to the consumer's acks, and its heartbeat is `at_ms`."""
    args = dramatiq_private.script_args(
        broker, "fetch", QUEUE, (1,), now_ms=at_ms, consumer_id=consumer_id, do_maintenance=False
    )
    fetched = broker.scripts["dispatch"](keys=[broker.namespace], args=args)
    assert len(fetched) == 1


def acks_key(broker: RedisBroker, consumer_id: str) -> str:
    return f"{broker.namespace}:__acks__.{consumer_id}.{QUEUE}"


def held_by(client: redis.Redis, broker: RedisBroker, consumer_id: str) -> set[bytes]:
    """Ids of the messages `consumer_id` fetched and has not acked."""
    return set(client.smembers(acks_key(broker, consumer_id)))  # type: ignore[arg-type]


async def test_a_dead_consumers_fetched_message_goes_back_to_the_queue(
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    watch_settings: Settings,
    redis_client: redis.Redis,
) -> None:
    await queued_tasks(sessionmaker, broker, watch_settings, 2)
    now_ms = current_millis()
    # One consumer fell silent a minute ago holding a message, one is alive holding the other.
    fetch_as(broker, "dead-worker", now_ms - 60_000)
    fetch_as(broker, "live-worker", now_ms)
    dead_held = held_by(redis_client, broker, "dead-worker")
    live_held = held_by(redis_client, broker, "live-worker")
    assert len(dead_held) == len(live_held) == 1
    assert redis_client.llen(QUEUE_KEY) == 0

    BrokerWatch(sessionmaker, broker, watch_settings).requeue_dead_consumers()

    assert set(redis_client.lrange(QUEUE_KEY, 0, -1)) == dead_held
    assert not redis_client.exists(acks_key(broker, "dead-worker"))
    assert held_by(redis_client, broker, "live-worker") == live_held
    # Still in the broker until a run acks it: the walk goes on finding it there.
    assert redis_client.hlen(MESSAGES_KEY) == 2
