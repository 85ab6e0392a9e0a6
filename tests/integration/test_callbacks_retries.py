"""A receiver's answers steer the retries: Retry-After (seconds or a date, within bounds),
410 Gone ends a delivery at once, and every try is recorded with its outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.deliverer import Deliverer
from shared import callback_admin
from shared.db.models import DeliveryAttempt
from shared.settings import Settings
from tests.callbacks import (
    callback_settings,
    deliver_batch,
    deliveries,
    end_tasks,
    failures,
    make_due,
    new_secret,
    submit,
)
from tests.helpers import api_client, make_user
from tests.receivers import receiving, verifies


@pytest.fixture
def cb_settings(settings: Settings) -> Settings:
    return callback_settings(settings).model_copy(
        update={"callback_retry_after_min_s": 30.0, "callback_retry_after_max_s": 3600.0}
    )


@pytest.fixture
async def client(cb_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(cb_settings) as http:
        yield http


@pytest.fixture
async def headers(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, str]:
    _, token = await make_user(sessionmaker, "alice")
    return {"Authorization": f"Bearer {token}"}


async def due_in_s(sessionmaker: async_sessionmaker[AsyncSession]) -> float:
    async with sessionmaker() as session:
        sql = text("SELECT extract(epoch FROM available_at - now()) FROM deliveries")
        return float((await session.execute(sql)).scalar_one())


async def attempts(sessionmaker: async_sessionmaker[AsyncSession]) -> list[DeliveryAttempt]:
    async with sessionmaker() as session:
        stmt = select(DeliveryAttempt).order_by(DeliveryAttempt.id)
        return list((await session.execute(stmt)).scalars())


@pytest.mark.parametrize(
    ("retry_after", "low_s", "high_s"),
    [
        ("120", 110.0, 121.0),
        ("http-date in 600 s", 580.0, 601.0),
        ("1", 25.0, 31.0),  # a receiver cannot make us hammer it: the lower bound
        ("999999999", 3500.0, 3601.0),  # nor park the delivery: the upper bound
    ],
)
async def test_retry_after_sets_the_next_try_within_bounds(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    retry_after: str,
    low_s: float,
    high_s: float,
) -> None:
    if retry_after.startswith("http-date"):
        retry_after = format_datetime(datetime.now(UTC) + timedelta(seconds=600), usegmt=True)
    await new_secret(client, headers)
    with receiving(statuses=[503]) as receiver:
        receiver.headers["Retry-After"] = retry_after
        await submit(client, headers, receiver.url())
        await end_tasks(sessionmaker)
        assert await deliver_batch(Deliverer(sessionmaker, cb_settings)) == 1
    assert low_s <= await due_in_s(sessionmaker) <= high_s
    [row] = await deliveries(sessionmaker)
    assert (row.last_status, row.dead_at, row.delivered_at) == (503, None, None)


async def test_a_410_ends_the_delivery_at_once_and_says_so(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await new_secret(client, headers)
    before = failures("410")
    deliverer = Deliverer(sessionmaker, cb_settings)
    with receiving(statuses=[410]) as receiver:
        await submit(client, headers, receiver.url())
        await end_tasks(sessionmaker)
        await deliver_batch(deliverer)
        await make_due(sessionmaker)
        assert await deliver_batch(deliverer) == 0
    assert len(receiver.received) == 1
    [row] = await deliveries(sessionmaker)
    assert row.attempts == 1 < cb_settings.callback_max_attempts
    assert row.dead_at is not None
    assert callback_admin.delivery_state(row) == "gone"
    assert row.last_error == "HTTP 410: the receiver is gone, not tried again"
    [attempt] = await attempts(sessionmaker)
    assert (attempt.status, attempt.outcome) == (410, "gone")
    assert failures("410") == before + 1


async def test_every_try_is_recorded_with_status_error_duration_and_time(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    secret = await new_secret(client, headers)
    deliverer = Deliverer(sessionmaker, cb_settings)
    started = datetime.now(UTC)
    with receiving(statuses=[500, 503, 204]) as receiver:
        await submit(client, headers, receiver.url())
        await end_tasks(sessionmaker)
        for _ in range(3):
            await deliver_batch(deliverer)
            await make_due(sessionmaker)
    assert all(verifies(secret, got) for got in receiver.received)
    first, second, third = await attempts(sessionmaker)
    assert [(a.status, a.error, a.outcome) for a in (first, second, third)] == [
        (500, "HTTP 500", "failed"),
        (503, "HTTP 503", "failed"),
        (204, None, "delivered"),
    ]
    for attempt in (first, second, third):
        assert started <= attempt.attempted_at <= datetime.now(UTC)
        assert 0 <= attempt.duration_ms < cb_settings.callback_timeout_s * 1000
    [row] = await deliveries(sessionmaker)
    assert (row.attempts, row.last_status, row.delivered_at is not None) == (3, 204, True)
