"""The deliverer's loop from a NOTIFY to its POST: one claim per callback, not one more for
the claim that found it and another as its POST ends."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.deliverer import Deliverer
from shared.db import callbacks
from shared.settings import Settings
from tests.callbacks import callback_settings, end_tasks, new_secret, submit
from tests.helpers import api_client, eventually, make_user
from tests.receivers import receiving

CALLBACKS = 8


@pytest.fixture
def cb_settings(settings: Settings) -> Settings:
    # No poll in the test's time: every claim is one a wake-up or the loop itself asked for.
    return callback_settings(settings).model_copy(update={"callback_poll_interval_s": 600.0})


@pytest.fixture
async def client(cb_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(cb_settings) as http:
        yield http


async def test_each_notified_callback_costs_one_claim(
    client: httpx.AsyncClient,
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, token = await make_user(sessionmaker, "alice")
    headers = {"Authorization": f"Bearer {token}"}
    await new_secret(client, headers)
    claims = 0
    real_claim = callbacks.claim_due

    async def counted(*args: object, **kwargs: object) -> list[callbacks.ClaimedDelivery]:
        nonlocal claims
        claims += 1
        return await real_claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(callbacks, "claim_due", counted)
    deliverer = Deliverer(sessionmaker, cb_settings)
    stop = asyncio.Event()
    with receiving() as receiver:
        running = asyncio.create_task(deliverer.run(stop))
        await eventually(lambda: claims == 1, "the loop's first claim")
        for n in range(CALLBACKS):
            await submit(client, headers, receiver.url(path=f"/{n}"))
            await end_tasks(sessionmaker, where=f"callback_url LIKE '%/{n}'")
            deliverer.wake()  # as the NOTIFY listener does
            await eventually(lambda n=n: len(receiver.received) == n + 1, f"callback {n}")
        stop.set()
        await running
    # The first claim, then one per wake-up; the loop asked for none of its own.
    assert claims == 1 + CALLBACKS


async def test_room_made_while_a_bounded_claim_ran_is_used_without_waiting_for_the_poll(
    client: httpx.AsyncClient,
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two POSTs in flight per user: the first claim takes two of six, the next finds the
    # user at the bound and takes none, and both POSTs end while it runs. No hint and no
    # poll comes in the test's time, so only the loop itself can send the other four.
    settings = cb_settings.model_copy(update={"callback_per_user_in_flight": 2})
    _, token = await make_user(sessionmaker, "alice")
    headers = {"Authorization": f"Bearer {token}"}
    await new_secret(client, headers)
    deliverer = Deliverer(sessionmaker, settings)
    real_claim = callbacks.claim_due
    with receiving() as receiver:
        receiver.gate = threading.Event()

        async def ends_posts_meanwhile(
            session: AsyncSession,
            limit: int,
            lease_s: float,
            attempts: int,
            bounds: callbacks.InFlight,
        ) -> list[callbacks.ClaimedDelivery]:
            claimed = await real_claim(session, limit, lease_s, attempts, bounds)
            if not claimed and sum(bounds.users.values()) >= bounds.per_user:
                assert receiver.gate is not None
                receiver.gate.set()
                await eventually(lambda: not +deliverer._users, "the held POSTs to end")
            return claimed

        monkeypatch.setattr(callbacks, "claim_due", ends_posts_meanwhile)
        for n in range(6):
            await submit(client, headers, receiver.url(path=f"/{n}"))
        await end_tasks(sessionmaker)
        stop = asyncio.Event()
        running = asyncio.create_task(deliverer.run(stop))
        try:
            await eventually(lambda: len(receiver.received) == 6, "all six callbacks")
        finally:
            stop.set()
            receiver.gate.set()
            await running
