"""A hint wakes the relay; a lost subscription comes back, and polling covers the gap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from pydantic import SecretStr
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relay_service.listener import CLIENT_NAME, build_listener
from relay_service.publisher import DramatiqPublisher, Outcomes
from relay_service.relay import Relay
from relay_service.scheduler import build_scheduler, relay_jobs
from shared import keys, wakeups
from shared.db.models import OutboxMessage
from shared.db.outbox import ClaimedMessage
from shared.dramatiq_broker import create_broker
from shared.embedded import free_port
from shared.settings import Settings
from tests.helpers import eventually
from tests.relay_support import create_tasks, unpublished_count

DEADLINE_S = 10.0


@asynccontextmanager
async def running(relay: Relay, listener: wakeups.HintListener) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(listener.run(stop))]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


@pytest.fixture
def broker(settings: Settings) -> Iterator[RedisBroker]:
    broker = create_broker(settings, middleware=[])
    yield broker
    broker.client.connection_pool.disconnect()


def all_published(sessionmaker: async_sessionmaker[AsyncSession]) -> Callable[[], object]:
    async def check() -> bool:
        return await unpublished_count(sessionmaker) == 0

    return check


def kill_subscription(redis_client: redis.Redis) -> int:
    """Close the relay's subscription from the server's side; how many were closed."""
    killed = 0
    for client in redis_client.client_list():
        if client.get("name") == CLIENT_NAME:
            killed += int(redis_client.client_kill_filter(_id=client["id"]))
    return killed


async def test_listener_resubscribes_after_redis_drops_it_and_a_hint_wakes_the_relay_again(
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    redis_client: redis.Redis,
) -> None:
    relay = Relay(engine, DramatiqPublisher(broker), settings)
    fast = settings.model_copy(update={"relay_listen_reconnect_max_s": 0.5})
    listener = build_listener(fast, relay.wake, lambda: None)
    hints = wakeups.Hints(wakeups.create_client(settings))

    async def connected(times: int) -> bool:
        return listener.connected and listener.connections == times

    # No scheduler: only a hint (or the listener's wake-up on subscribing) starts a cycle.
    async with running(relay, listener):
        await eventually(lambda: connected(1), "the listener to subscribe", deadline_s=DEADLINE_S)
        await create_tasks(sessionmaker, 3)
        await hints.outbox()
        await eventually(
            all_published(sessionmaker), "the first rows to go out", deadline_s=DEADLINE_S
        )

        assert kill_subscription(redis_client) == 1
        await eventually(lambda: connected(2), "the listener to resubscribe", deadline_s=DEADLINE_S)
        await create_tasks(sessionmaker, 3)
        await hints.outbox()
        await eventually(
            all_published(sessionmaker), "rows committed after it", deadline_s=DEADLINE_S
        )
    await hints.aclose()
    assert redis_client.llen(keys.broker_queue_key("scans")) == 6


async def test_polling_publishes_while_nobody_listens_including_rows_due_later(
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
    redis_client: redis.Redis,
) -> None:
    fast = settings.model_copy(update={"relay_poll_interval_s": 0.2})
    relay = Relay(engine, DramatiqPublisher(broker), fast)
    nowhere = settings.model_copy(
        update={"broker_url": SecretStr(f"redis://127.0.0.1:{free_port()}/0")}
    )
    listener = wakeups.HintListener(nowhere, {wakeups.OUTBOX: lambda _: relay.wake()}, 0.5, "x")
    scheduler = build_scheduler(relay_jobs(fast, relay), leads=lambda: False)
    await create_tasks(sessionmaker, 2)
    # One row is only due in a moment: no hint will announce that.
    async with sessionmaker() as session, session.begin():
        later = func.now() + timedelta(seconds=0.5)
        await session.execute(
            update(OutboxMessage).where(OutboxMessage.id == 2).values(available_at=later)
        )
    scheduler.start()
    try:
        async with running(relay, listener):
            await eventually(
                all_published(sessionmaker), "polling to publish", deadline_s=DEADLINE_S
            )
    finally:
        scheduler.shutdown(wait=False)
    assert listener.connections == 0
    assert redis_client.llen(keys.broker_queue_key("scans")) == 2


async def test_a_quiet_subscription_answers_its_pings_and_stays_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wakeups, "HEALTH_CHECK_INTERVAL_S", 0.05)
    woken: list[str | None] = []
    listener = wakeups.HintListener(settings, {wakeups.OUTBOX: woken.append}, 0.5, "quiet")
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        await eventually(lambda: listener.connected, "the listener to subscribe")
        # Twenty ping intervals with no hint: each ping answered, no reconnect.
        await asyncio.sleep(1.0)
        assert (listener.connected, listener.connections) == (True, 1)
    finally:
        stop.set()
        await task
    # One wake-up for the subscription itself, nothing else.
    assert woken == [None]


class CountingPublisher:
    """The real publisher, remembering how many rows each batch carried."""

    def __init__(self, inner: DramatiqPublisher) -> None:
        self.inner = inner
        self.batches: list[int] = []

    async def publish(self, messages: Sequence[ClaimedMessage]) -> Outcomes:
        self.batches.append(len(messages))
        return await self.inner.publish(messages)


async def test_while_rows_keep_coming_the_hints_of_the_busy_gap_make_one_claim(
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: RedisBroker,
) -> None:
    gap = settings.model_copy(update={"relay_busy_gap_s": 1.0})
    publisher = CountingPublisher(DramatiqPublisher(broker))
    relay = Relay(engine, publisher, gap)
    stop = asyncio.Event()
    running_relay = asyncio.create_task(relay.run(stop))
    try:
        await create_tasks(sessionmaker, 1)
        relay.wake()
        await eventually(all_published(sessionmaker), "the first row", deadline_s=DEADLINE_S)
        # Three commits, each hinted, inside the gap that follows the first cycle.
        for _ in range(3):
            await create_tasks(sessionmaker, 1)
            relay.wake()
        await eventually(all_published(sessionmaker), "the three rows", deadline_s=DEADLINE_S)
    finally:
        stop.set()
        await running_relay
    assert publisher.batches == [1, 3]
