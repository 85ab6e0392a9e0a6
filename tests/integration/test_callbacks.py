"""Completion callbacks with a real local HTTP receiver: written with the terminal state,
delivered signed (checked by the verification code of docs/api.md), retried with backoff,
dead after the last try, never redirected, guarded against private addresses."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.deliverer import Deliverer
from shared import signing
from shared.embedded import free_port
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
from tests.helpers import api_client, eventually, make_user
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


@pytest.mark.parametrize("status", ["succeeded", "failed"])
async def test_a_task_callback_is_delivered_signed_after_success_and_failure(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    status: str,
) -> None:
    secret = await new_secret(client, headers)
    with receiving() as receiver:
        task = await submit(client, headers, receiver.url())
        assert await deliveries(sessionmaker) == []
        await end_tasks(sessionmaker, status)

        assert await deliver_batch(Deliverer(sessionmaker, cb_settings)) == 1

    [got] = receiver.received
    body = json.loads(got.body)
    assert (body["event"], body["task"]["id"], body["task"]["status"]) == (
        "task.finished",
        task["id"],
        status,
    )
    assert got.headers["webhook-id"] == body["id"]
    assert got.headers["Scan-Delivery-Id"] == body["id"]
    assert got.headers["Scan-Event"] == "task.finished"
    assert got.headers["Host"] == f"hooks.example.com:{receiver.port}"
    assert verifies(secret, got)
    other = signing.new_secret()
    for check in (documented_verify(), documented_receiver(), legacy_verify):
        assert not check(secret, got.headers, got.body + b" ")
        assert not check(other, got.headers, got.body)
    tampered = {**got.headers, "webhook-id": "another-id"}
    assert not documented_verify()(secret, tampered, got.body)
    assert not documented_receiver()(secret, tampered, got.body)
    [row] = await deliveries(sessionmaker)
    assert (row.delivered_at is not None, row.last_status, row.attempts) == (True, 200, 1)


async def test_500_then_200_is_delivered_on_the_second_try_with_backoff(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await new_secret(client, headers)
    before = failures("500")
    deliverer = Deliverer(sessionmaker, cb_settings)
    with receiving(statuses=[500, 200]) as receiver:
        await submit(client, headers, receiver.url())
        await end_tasks(sessionmaker)
        await deliver_batch(deliverer)
        [failed] = await deliveries(sessionmaker)
        # Backing off: not due yet, so a cycle now sends nothing.
        assert await deliver_batch(deliverer) == 0
        await make_due(sessionmaker)
        await deliver_batch(deliverer)

    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["Scan-Delivery-Id"] == second.headers["Scan-Delivery-Id"]
    assert first.body == second.body
    assert (failed.last_status, failed.last_error, failed.delivered_at) == (500, "HTTP 500", None)
    [row] = await deliveries(sessionmaker)
    assert (row.delivered_at is not None, row.attempts, row.last_status) == (True, 2, 200)
    assert failures("500") == before + 1


async def test_a_receiver_down_then_up_gets_the_callback(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await new_secret(client, headers)
    port = free_port()
    await submit(client, headers, f"http://hooks.example.com:{port}/cb")
    await end_tasks(sessionmaker)
    deliverer = Deliverer(sessionmaker, cb_settings)

    await deliver_batch(deliverer)
    [down] = await deliveries(sessionmaker)
    await make_due(sessionmaker)
    with receiving(port=port) as receiver:
        await deliver_batch(deliverer)

    assert down.last_error is not None
    assert down.last_error.startswith("connection")
    assert len(receiver.received) == 1
    [row] = await deliveries(sessionmaker)
    assert row.delivered_at is not None
    assert row.attempts == 2


async def test_a_redirect_is_never_followed_even_to_a_private_address(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await new_secret(client, headers)
    with receiving(statuses=[302]) as redirecting, receiving() as private:
        redirecting.location = f"http://127.0.0.1:{private.port}/internal"
        await submit(client, headers, redirecting.url())
        await end_tasks(sessionmaker)
        await deliver_batch(Deliverer(sessionmaker, cb_settings))

    assert len(redirecting.received) == 1
    assert private.received == []
    [row] = await deliveries(sessionmaker)
    assert (row.last_status, row.last_error, row.delivered_at) == (
        302,
        "HTTP 302: not followed",
        None,
    )


async def test_the_guard_refuses_at_delivery_a_name_that_now_resolves_privately(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await new_secret(client, headers)
    before = failures("refused")
    with receiving() as receiver:
        await submit(client, headers, receiver.url())
        await end_tasks(sessionmaker)
        guarded = cb_settings.model_copy(update={"allow_private": False})
        await deliver_batch(Deliverer(sessionmaker, guarded))

    assert receiver.received == []
    [row] = await deliveries(sessionmaker)
    assert row.dead_at is not None
    assert row.last_error is not None
    assert "127.0.0.1 is loopback" in row.last_error
    assert failures("refused") == before + 1


async def test_a_delivery_is_dead_after_the_last_try_and_replay_sends_it_again(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    from shared.db import deliveries as delivery_rows

    await new_secret(client, headers)
    deliverer = Deliverer(sessionmaker, cb_settings)
    with receiving(statuses=[503, 503, 503, 200]) as receiver:
        await submit(client, headers, receiver.url())
        await end_tasks(sessionmaker)
        for _ in range(cb_settings.callback_max_attempts):
            await make_due(sessionmaker)
            await deliver_batch(deliverer)
        [dead] = await deliveries(sessionmaker)
        await make_due(sessionmaker)
        assert await deliver_batch(deliverer) == 0
        async with sessionmaker() as session, session.begin():
            assert await delivery_rows.replay(session, None, [dead.id]) == 1
        await deliver_batch(deliverer)

    assert (dead.dead_at is not None, dead.attempts, dead.last_status) == (True, 3, 503)
    assert len(receiver.received) == 4
    [row] = await deliveries(sessionmaker)
    assert row.delivered_at is not None
    assert row.dead_at is None


async def test_a_batch_sends_one_callback_when_its_last_task_ends(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    secret = await new_secret(client, headers)
    with receiving() as receiver:
        body = {
            "tasks": [{"target_domain": f"b{n}.example.com"} for n in range(3)],
            "callback_url": receiver.url(path="/batch"),
        }
        batch = (await client.post("/api/v1/batches", json=body, headers=headers)).json()
        await end_tasks(sessionmaker, "succeeded", "target_domain = 'b0.example.com'")
        await end_tasks(sessionmaker, "failed", "target_domain = 'b1.example.com'")
        assert await deliveries(sessionmaker) == []
        await end_tasks(sessionmaker, "cancelled", "target_domain = 'b2.example.com'")
        await deliver_batch(Deliverer(sessionmaker, cb_settings))

    [got] = receiver.received
    payload = json.loads(got.body)
    assert payload["event"] == "batch.finished"
    assert payload["batch"]["id"] == batch["id"]
    assert payload["batch"]["task_count"] == 3
    assert payload["batch"]["counts"] == {"succeeded": 1, "failed": 1, "cancelled": 1}
    assert verifies(secret, got)


async def test_two_last_tasks_ending_at_once_write_exactly_one_batch_delivery(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await new_secret(client, headers)
    body = {
        "tasks": [{"target_domain": "x.example.com"}, {"target_domain": "y.example.com"}],
        "callback_url": "http://hooks.example.com:9/batch",
    }
    assert (await client.post("/api/v1/batches", json=body, headers=headers)).status_code == 201
    first = await asyncpg.connect(cb_settings.asyncpg_dsn)
    second = await asyncpg.connect(cb_settings.asyncpg_dsn)
    # Outside any transaction, so each look at pg_stat_activity is a fresh snapshot.
    observer = await asyncpg.connect(cb_settings.asyncpg_dsn)
    finish = "UPDATE tasks SET status = 'succeeded', finished_at = now() WHERE target_domain = $1"
    try:
        one, two = first.transaction(), second.transaction()
        await one.start()
        await two.start()
        await first.execute(finish, "x.example.com")
        blocked = asyncio.create_task(second.execute(finish, "y.example.com"))
        # The second waits on the batch row the first one's trigger locked.
        await eventually(
            lambda: waits_for_lock(observer, second.get_server_pid()), "the second to wait"
        )
        assert not blocked.done()
        await one.commit()
        await blocked
        await two.commit()
    finally:
        for connection in (first, second, observer):
            await connection.close()

    rows = await deliveries(sessionmaker)
    assert [row.payload["event"] for row in rows] == ["batch.finished"]


async def waits_for_lock(observer: asyncpg.Connection, pid: int) -> bool:
    event = await observer.fetchval(
        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
    )
    return bool(event == "Lock")


async def test_the_relay_loop_delivers_around_a_receiver_that_hangs(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await new_secret(client, headers)
    # Two slots, and a timeout far beyond the test's deadlines: if the hanging POST held
    # up the others, they would not arrive before it is released.
    looping = cb_settings.model_copy(update={"callback_batch_size": 2, "callback_timeout_s": 60})
    deliverer = Deliverer(sessionmaker, looping)
    stop = asyncio.Event()
    gate = threading.Event()
    with receiving() as hanging, receiving() as fast:
        hanging.gate = gate
        await submit(client, headers, hanging.url(path="/hangs"))
        await end_tasks(sessionmaker)
        running = asyncio.create_task(deliverer.run(stop))
        await eventually(lambda: attempts_made(sessionmaker), "the hanging delivery's claim")
        for n in range(3):
            await submit(client, headers, fast.url(path=f"/fast{n}"))
        await end_tasks(sessionmaker, where="callback_url LIKE '%/fast%'")

        await eventually(lambda: len(fast.received) == 3, "the other deliveries")
        held_back = hanging.received == []
        gate.set()
        await eventually(lambda: len(hanging.received) == 1, "the hanging one's answer")
        stop.set()
        await running

    assert held_back
    rows = await deliveries(sessionmaker)
    assert [row.delivered_at is not None for row in rows] == [True] * 4


async def attempts_made(sessionmaker: async_sessionmaker[AsyncSession]) -> bool:
    async with sessionmaker() as session:
        tried = await session.execute(text("SELECT count(*) FROM deliveries WHERE attempts > 0"))
        return bool(tried.scalar_one())
