"""Callback hosts beyond ASCII names: an IDN host travels as punycode in DNS, Host and the
URL, an IPv6 literal in brackets; both are accepted at submit and delivered end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.deliverer import Deliverer
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
from tests.receivers import receiving, verifies

IDN_HOST = "bücher.example"
PUNYCODE_HOST = "xn--bcher-kva.example"


@pytest.fixture
def cb_settings(settings: Settings) -> Settings:
    base = callback_settings(settings)
    # The resolver knows the name only in its DNS (punycode) form, as a real zone would.
    overrides = {**base.resolver_overrides, PUNYCODE_HOST: "127.0.0.1"}
    return base.model_copy(update={"resolver_overrides": overrides})


@pytest.fixture
async def client(cb_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(cb_settings) as http:
        yield http


@pytest.fixture
async def headers(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, str]:
    _, token = await make_user(sessionmaker, "alice")
    return {"Authorization": f"Bearer {token}"}


async def test_an_idn_callback_host_is_delivered_as_punycode(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    secret = await new_secret(client, headers)
    with receiving() as receiver:
        await submit(client, headers, receiver.url(host=IDN_HOST))
        await end_tasks(sessionmaker)
        assert await deliver_batch(Deliverer(sessionmaker, cb_settings)) == 1
    [got] = receiver.received
    assert got.headers["Host"] == f"{PUNYCODE_HOST}:{receiver.port}"
    assert got.path == "/cb"
    assert verifies(secret, got)
    [row] = await deliveries(sessionmaker)
    assert (row.last_status, row.delivered_at is not None) == (200, True)


async def test_an_ipv6_literal_callback_host_gets_a_bracketed_host_header(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    secret = await new_secret(client, headers)
    with receiving(bind="::1") as receiver:
        await submit(client, headers, receiver.url(host="[::1]"))
        await end_tasks(sessionmaker)
        assert await deliver_batch(Deliverer(sessionmaker, cb_settings)) == 1
    [got] = receiver.received
    assert got.headers["Host"] == f"[::1]:{receiver.port}"
    assert verifies(secret, got)
    [row] = await deliveries(sessionmaker)
    assert (row.last_status, row.delivered_at is not None) == (200, True)


async def test_a_name_that_resolves_to_ipv6_only_is_delivered_over_ipv6(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    v6 = cb_settings.model_copy(
        update={"resolver_overrides": {**cb_settings.resolver_overrides, "v6.example": "::1"}}
    )
    secret = await new_secret(client, headers)
    with receiving(bind="::1") as receiver:
        await submit(client, headers, receiver.url(host="v6.example"))
        await end_tasks(sessionmaker)
        assert await deliver_batch(Deliverer(sessionmaker, v6)) == 1
    [got] = receiver.received
    assert got.headers["Host"] == f"v6.example:{receiver.port}"
    assert verifies(secret, got)
