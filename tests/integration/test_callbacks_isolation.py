"""Completion callbacks kept from hurting anyone else: the claim bounds what one user and one
receiver host hold in flight, a delivery out of tries is never leased again, host lookups go
to the configured resolver on the event loop (never the default executor), and the API holds
no database connection while it resolves a callback host."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.deliverer import Deliverer
from shared.db import callbacks
from shared.settings import Settings
from tests.callbacks import (
    callback_settings,
    deliver_batch,
    deliveries,
    end_tasks,
    new_secret,
    submit,
)
from tests.helpers import api_client, eventually, make_user
from tests.nameservers import nameserver
from tests.receivers import receiving


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


async def insert_deliveries(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: int, urls: list[str]
) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(
            text(
                "INSERT INTO deliveries (delivery_id, user_id, url, payload)"
                " SELECT gen_random_uuid(), :user_id, url, '{}'::jsonb FROM unnest("
                " CAST(:urls AS text[])) WITH ORDINALITY AS u(url, n) ORDER BY n"
            ),
            {"user_id": user_id, "urls": urls},
        )


async def test_the_claim_gives_no_user_or_host_more_than_its_free_slots(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    alice, _ = await make_user(sessionmaker, "alice")
    bob, _ = await make_user(sessionmaker, "bob")
    carol, _ = await make_user(sessionmaker, "carol")
    # Alice's backlog comes first, then Bob's on a host shared with Carol, then Carol's.
    await insert_deliveries(sessionmaker, alice.id, ["https://a.example.net/cb"] * 30)
    await insert_deliveries(sessionmaker, bob.id, ["https://shared.example.net:8443/x"] * 5)
    await insert_deliveries(
        sessionmaker,
        carol.id,
        ["https://U@Shared.Example.NET/y", "https://[2001:db8::1]:443/z", "http://c.example.net"],
    )
    bounds = callbacks.InFlight(per_user=4, per_host=3, users={alice.id: 1}, hosts={})
    async with sessionmaker() as session, session.begin():
        claimed = await callbacks.claim_due(session, 50, 60.0, 10, bounds)

    by_user = {
        user_id: [c.host for c in claimed if c.user_id == user_id]
        for user_id in (alice.id, bob.id, carol.id)
    }
    assert by_user[alice.id] == ["a.example.net"] * 3  # 4 per user, 1 already in flight
    assert by_user[bob.id] == ["shared.example.net"] * 3  # 3 per host, whatever the port
    assert by_user[carol.id] == ["[2001:db8::1]", "c.example.net"]  # the shared host is full


async def test_a_delivery_out_of_attempts_is_made_dead_and_never_leased_again(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await new_secret(client, headers)
    with receiving() as receiver:
        await submit(client, headers, receiver.url())
        await end_tasks(sessionmaker)
        # Its last try leased, then its relay died before recording anything (killed for
        # memory, say), and the lease ran out.
        async with sessionmaker() as session, session.begin():
            await session.execute(
                text("UPDATE deliveries SET attempts = :n, available_at = now()"),
                {"n": cb_settings.callback_max_attempts},
            )
        deliverer = Deliverer(sessionmaker, cb_settings)
        assert await deliver_batch(deliverer) == 0
        # The leader's burying job (relay_service/scheduler.py) makes it dead.
        assert await deliverer.bury_exhausted() == 1
        assert await deliver_batch(deliverer) == 0

    assert receiver.arrived == 0
    [row] = await deliveries(sessionmaker)
    assert row.attempts == cb_settings.callback_max_attempts
    assert row.dead_at is not None
    assert row.last_error == "out of attempts: try 3 recorded no outcome"


async def test_a_callback_host_is_looked_up_and_delivered_while_the_default_executor_is_stuck(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await new_secret(client, headers)
    loop = asyncio.get_running_loop()
    stuck = threading.Event()
    executor = ThreadPoolExecutor(max_workers=1)
    with nameserver() as dns_server, receiving() as receiver:
        dns_server.release.set()
        settings = cb_settings.model_copy(update={"dns_nameservers": [dns_server.address]})
        await submit(client, headers, receiver.url(host="hook.callbacks.test"))
        await end_tasks(sessionmaker)
        # Every thread of the default executor busy, as with hung getaddrinfo calls.
        loop.set_default_executor(executor)
        blocker = loop.run_in_executor(None, stuck.wait, 60)
        try:
            assert await deliver_batch(Deliverer(sessionmaker, settings)) == 1
        finally:
            stuck.set()
            await blocker
            loop.set_default_executor(ThreadPoolExecutor())
            executor.shutdown()

    assert ("hook.callbacks.test", "A") in dns_server.queries
    assert len(receiver.received) == 1
    [row] = await deliveries(sessionmaker)
    assert (row.delivered_at is not None, row.last_status) == (True, 200)


def slow_submit(
    http: httpx.AsyncClient, headers: dict[str, str], n: int
) -> Awaitable[httpx.Response]:
    """A task (odd `n`) or a batch (even) whose callback host answers only when released."""
    callback_url = f"http://hook{n}.slow-dns.test/cb"
    if n % 2:
        body = {"target_domain": f"t{n}.example.com", "callback_url": callback_url}
        return http.post("/api/v1/tasks", json=body, headers=headers)
    body = {"tasks": [{"target_domain": f"b{n}.example.com"}], "callback_url": callback_url}
    return http.post("/api/v1/batches", json=body, headers=headers)


async def test_slow_callback_lookups_leave_the_pool_to_other_clients_and_readyz(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, slow_token = await make_user(sessionmaker, "slow")
    _, other_token = await make_user(sessionmaker, "other")
    slow = {"Authorization": f"Bearer {slow_token}"}
    other = {"Authorization": f"Bearer {other_token}"}
    with nameserver() as dns_server:
        api_settings = callback_settings(settings).model_copy(
            update={
                "dns_nameservers": [dns_server.address],
                "callback_submit_resolve_timeout_s": 120.0,
                "db_pool_size": 3,
                "db_max_overflow": 0,
            }
        )
        async with api_client(api_settings) as http:
            await new_secret(http, slow)
            submissions = [asyncio.create_task(slow_submit(http, slow, n)) for n in range(20)]
            await eventually(
                lambda: len(dns_server.names()) == 20,
                "20 submissions waiting on their callback host's lookup",
                deadline_s=60,
            )
            created = await http.post(
                "/api/v1/tasks", json={"target_domain": "o.example.com"}, headers=other
            )
            ready = await http.get("/readyz")
            still_waiting = sum(not task.done() for task in submissions)
            dns_server.release.set()
            answers = await asyncio.gather(*submissions)

    assert created.status_code == 201, created.text
    assert ready.status_code == 200, ready.text
    assert still_waiting == 20, "the other client's requests waited for the slow ones"
    assert [answer.status_code for answer in answers] == [201] * 20


async def test_a_batch_over_its_rate_limit_is_refused_before_its_callback_host_is_looked_up(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await make_user(sessionmaker, "limited")
    headers = {"Authorization": f"Bearer {token}"}
    with nameserver() as dns_server:
        dns_server.release.set()
        api_settings = callback_settings(settings).model_copy(
            update={
                "dns_nameservers": [dns_server.address],
                "rate_limit_per_minute": 1,
                "rate_limit_burst": 5,
            }
        )
        async with api_client(api_settings) as http:
            await new_secret(http, headers)
            body = {
                "tasks": [{"target_domain": f"d{n}.example.com"} for n in range(5)],
                "callback_url": "http://hook.limited.test/cb",
            }
            accepted = await http.post("/api/v1/batches", json=body, headers=headers)
            body["tasks"] = [{"target_domain": "late.example.com"}]
            body["callback_url"] = "http://hook.refused.test/cb"
            refused = await http.post("/api/v1/batches", json=body, headers=headers)

    assert accepted.status_code == 201, accepted.text
    assert refused.status_code == 429, refused.text
    assert dns_server.names() == {"hook.limited.test"}
    assert len([q for q in dns_server.queries if q[1] == "A"]) == 1
