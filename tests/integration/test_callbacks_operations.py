"""Operating completion callbacks: secret rotation, pruning, gauges, and rows that
cannot be sent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.deliverer import Deliverer
from shared.db.models import Delivery
from shared.settings import Settings
from tests.callbacks import (
    callback_settings,
    deliver_batch,
    deliveries,
    end_tasks,
    new_secret,
    submit,
)
from tests.helpers import api_client, make_user
from tests.receivers import (
    documented_receiver,
    documented_verify,
    legacy_verify,
    receiving,
    verifies,
)


@pytest.fixture
def cb_settings(settings: Settings) -> Settings:
    return callback_settings(settings)


@pytest.fixture
async def client(
    cb_settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(cb_settings) as http:
        yield http


@pytest.fixture
async def headers(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> dict[str, str]:
    _, token = await make_user(sessionmaker, "alice")
    return {"Authorization": f"Bearer {token}"}


async def test_during_a_rotation_both_secrets_sign_until_the_old_one_is_retired(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    old = await new_secret(client, headers)
    rotated = await client.post("/api/v1/callbacks/secret", headers=headers)
    new = rotated.json()["secret"]
    assert rotated.json()["previous_still_signs"] is True
    verify = documented_verify()
    with receiving() as receiver:
        await submit(client, headers, receiver.url())
        await end_tasks(sessionmaker)
        await deliver_batch(Deliverer(sessionmaker, cb_settings))
        newest = await new_secret(client, headers, retire_previous=True)
        await submit(client, headers, receiver.url(path="/second"))
        await end_tasks(sessionmaker, where="callback_url LIKE '%/second'")
        await deliver_batch(Deliverer(sessionmaker, cb_settings))

    during, after = receiver.received
    assert during.headers["webhook-signature"].count("v1,") == 2
    for secret in (old, new):
        assert verifies(secret, during)
    assert verifies(newest, after)
    receive = documented_receiver()
    assert not receive(new, after.headers, after.body)
    assert not verify(new, after.headers, after.body)
    assert not legacy_verify(new, after.headers, after.body)


async def test_delivered_rows_past_retention_are_pruned_dead_and_pending_kept(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await new_secret(client, headers)
    for _ in range(3):
        await submit(client, headers, "http://hooks.example.com:9/cb")
    await end_tasks(sessionmaker)
    async with sessionmaker() as session, session.begin():
        ids = [row.id for row in (await session.execute(select(Delivery.id))).all()]
        old, recent, dead = ids
        await session.execute(
            text("UPDATE deliveries SET delivered_at = now() - interval '8 days' WHERE id = :old"),
            {"old": old},
        )
        await session.execute(
            text("UPDATE deliveries SET delivered_at = now() WHERE id = :id"), {"id": recent}
        )
        await session.execute(
            text("UPDATE deliveries SET dead_at = now() - interval '30 days' WHERE id = :id"),
            {"id": dead},
        )

    pruned = await Deliverer(
        sessionmaker, cb_settings.model_copy(update={"relay_prune_batch_size": 1})
    ).prune()

    assert pruned == 1
    assert sorted(row.id for row in await deliveries(sessionmaker)) == [recent, dead]


async def test_a_url_that_cannot_be_called_is_dead_at_once_and_the_rest_goes_on(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await new_secret(client, headers)
    with receiving() as receiver:
        await submit(client, headers, receiver.url())
        await end_tasks(sessionmaker)
        async with sessionmaker() as session, session.begin():
            # Written by hand: the API would have refused it.
            await session.execute(
                text(
                    "INSERT INTO deliveries (delivery_id, user_id, url, payload) "
                    "SELECT gen_random_uuid(), user_id, 'https://[::1/x', '{}' FROM deliveries"
                )
            )
        await deliver_batch(Deliverer(sessionmaker, cb_settings))

    assert len(receiver.received) == 1
    broken = [row for row in await deliveries(sessionmaker) if row.url.startswith("https://[")]
    assert broken[0].dead_at is not None
    assert broken[0].last_error is not None
    assert broken[0].last_error.startswith("refused: invalid URL")


async def test_the_gauges_show_pending_dead_and_the_oldest_pending_age(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await new_secret(client, headers)
    for n in range(3):
        await submit(client, headers, f"http://hooks.example.com:9/{n}")
    await end_tasks(sessionmaker)
    async with sessionmaker() as session, session.begin():
        await session.execute(
            text(
                "UPDATE deliveries SET created_at = now() - interval '90 seconds', "
                "available_at = now() + interval '1 hour' WHERE url LIKE '%/0'"
            )
        )
        await session.execute(text("UPDATE deliveries SET dead_at = now() WHERE url LIKE '%/1'"))
        await session.execute(
            text(
                "UPDATE deliveries SET available_at = now() + interval '1 hour' "
                "WHERE url LIKE '%/2'"
            )
        )

    await Deliverer(sessionmaker, cb_settings).refresh_gauges()

    def gauge(name: str) -> float:
        return REGISTRY.get_sample_value(f"scan_outbox_{name}") or 0.0

    assert (gauge("callbacks_pending"), gauge("callbacks_dead")) == (2.0, 1.0)
    assert 90 <= gauge("callbacks_oldest_pending_age_seconds") < 120
