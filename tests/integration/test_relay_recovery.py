"""A broker outage: rows back off with their error; once one goes out, the rest need not wait."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relay_service.publisher import DramatiqPublisher
from relay_service.relay import Relay
from shared import keys
from shared.db.models import OutboxMessage
from shared.dramatiq_broker import create_broker
from shared.embedded import free_port
from shared.settings import Settings
from tests.relay_support import create_tasks, outbox_rows


@pytest.fixture
def brokers(settings: Settings) -> Iterator[tuple[RedisBroker, RedisBroker]]:
    """A broker that works and one whose Redis is not there."""
    gone = SecretStr(f"redis://127.0.0.1:{free_port()}/0")
    working = create_broker(settings, middleware=[])
    down = create_broker(settings.model_copy(update={"broker_url": gone}), middleware=[])
    yield working, down
    for broker in (working, down):
        broker.client.connection_pool.disconnect()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"scan_outbox_{name}", labels) or 0.0


async def test_after_an_outage_the_first_successful_publish_releases_the_backlog(
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    brokers: tuple[RedisBroker, RedisBroker],
    redis_client: redis.Redis,
) -> None:
    working, down = brokers
    # A long backoff: without the release, nothing would go out for a minute.
    slow = settings.model_copy(update={"relay_backoff_base_s": 60.0, "relay_batch_size": 500})
    await create_tasks(sessionmaker, 20)
    failures_before = sample("publish_failures_total", kind="transient")
    published_before = sample("messages_published_total")
    latencies_before = sample("commit_to_publish_seconds_count")

    assert await Relay(engine, DramatiqPublisher(down), slow).drain() == 20
    rows = await outbox_rows(sessionmaker)
    assert {(row.publish_attempts, row.published_at) for row in rows} == {(1, None)}
    assert all(row.last_error and "broker unavailable" in row.last_error for row in rows)
    assert sample("publish_failures_total", kind="transient") == failures_before + 20

    relay = Relay(engine, DramatiqPublisher(working), slow)
    assert await relay.drain() == 0, "every row is backing off"
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(OutboxMessage).where(OutboxMessage.id == 1).values(available_at=func.now())
        )
    assert await relay.run_once() == 1
    assert await relay.drain() == 19
    assert {row.published_at is not None for row in await outbox_rows(sessionmaker)} == {True}
    assert redis_client.llen(keys.broker_queue_key("scans")) == 20
    assert sample("messages_published_total") == published_before + 20
    assert sample("commit_to_publish_seconds_count") == latencies_before + 20


async def test_a_deferred_row_keeps_its_time_when_the_backlog_is_released(
    engine: AsyncEngine,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    brokers: tuple[RedisBroker, RedisBroker],
) -> None:
    working, _ = brokers
    await create_tasks(sessionmaker, 2)
    async with sessionmaker() as session, session.begin():
        # Row 1 failed before and is due; row 2 was written to go out in an hour.
        await session.execute(
            update(OutboxMessage).where(OutboxMessage.id == 1).values(publish_attempts=1)
        )
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == 2)
            .values(available_at=func.now() + func.make_interval(0, 0, 0, 0, 1))
        )
    assert await Relay(engine, DramatiqPublisher(working), settings).drain() == 1
    deferred = (await outbox_rows(sessionmaker))[1]
    assert deferred.published_at is None
    assert deferred.available_at > deferred.created_at
