"""A client's own deliveries through the API (list, show with attempts, replay, a test
event) and an administrator's across clients; another client's are 404."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.deliverer import Deliverer
from shared.db.models import Delivery
from shared.settings import Settings
from tests.callbacks import (
    callback_settings,
    deliver_batch,
    end_tasks,
    make_due,
    new_secret,
    submit,
)
from tests.helpers import api_client, make_user
from tests.receivers import receiving, verifies


@pytest.fixture
def cb_settings(settings: Settings) -> Settings:
    return callback_settings(settings)


@pytest.fixture
async def client(cb_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(cb_settings) as http:
        yield http


async def bearer(
    sessionmaker: async_sessionmaker[AsyncSession], name: str, admin: bool = False
) -> dict[str, str]:
    _, token = await make_user(sessionmaker, name, admin=admin)
    return {"Authorization": f"Bearer {token}"}


async def dead_delivery(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    url: str,
) -> str:
    """A delivery of `headers`' user made dead by a receiver answering 500 every try."""
    await submit(client, headers, url)
    await end_tasks(sessionmaker)
    deliverer = Deliverer(sessionmaker, cb_settings)
    for _ in range(cb_settings.callback_max_attempts):
        await deliver_batch(deliverer)
        await make_due(sessionmaker)
    page = (await client.get("/api/v1/callbacks/deliveries?state=dead", headers=headers)).json()
    [item] = page["items"]
    return str(item["id"])


async def test_a_client_replays_its_own_dead_delivery_and_sees_every_attempt(
    client: httpx.AsyncClient,
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    alice = await bearer(sessionmaker, "alice")
    secret = await new_secret(client, alice)
    with receiving(statuses=[500, 500, 500, 200]) as receiver:
        delivery_id = await dead_delivery(client, alice, cb_settings, sessionmaker, receiver.url())
        shown = (
            await client.get(f"/api/v1/callbacks/deliveries/{delivery_id}", headers=alice)
        ).json()
        assert shown["state"] == "dead"
        assert [a["status"] for a in shown["attempt_log"]] == [500, 500, 500]
        assert [a["outcome"] for a in shown["attempt_log"]] == ["failed", "failed", "dead"]
        assert all(a["error"] == "HTTP 500" and a["duration_ms"] >= 0 for a in shown["attempt_log"])

        replayed = await client.post(
            f"/api/v1/callbacks/deliveries/{delivery_id}/replay", headers=alice
        )
        assert replayed.status_code == 202, replayed.text
        assert (replayed.json()["state"], replayed.json()["attempts"]) == ("pending", 0)
        assert await deliver_batch(Deliverer(sessionmaker, cb_settings)) == 1

    last = receiver.received[-1]
    assert last.headers["webhook-id"] == delivery_id
    assert verifies(secret, last)
    shown = (await client.get(f"/api/v1/callbacks/deliveries/{delivery_id}", headers=alice)).json()
    assert shown["state"] == "delivered"
    assert [a["status"] for a in shown["attempt_log"]] == [500, 500, 500, 200]
    again = await client.post(f"/api/v1/callbacks/deliveries/{delivery_id}/replay", headers=alice)
    assert again.status_code == 409
    assert again.json()["error"]["current_status"] == "delivered"


async def test_a_client_can_neither_see_nor_replay_another_clients_delivery(
    client: httpx.AsyncClient,
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    alice, mallory = await bearer(sessionmaker, "alice"), await bearer(sessionmaker, "mallory")
    await new_secret(client, alice)
    with receiving(statuses=[500]) as receiver:
        delivery_id = await dead_delivery(client, alice, cb_settings, sessionmaker, receiver.url())
        sent = len(receiver.received)
        base = f"/api/v1/callbacks/deliveries/{delivery_id}"
        assert (await client.get(base, headers=mallory)).status_code == 404
        refused = await client.post(f"{base}/replay", headers=mallory)
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "not_found"
        listed = (await client.get("/api/v1/callbacks/deliveries", headers=mallory)).json()
        assert listed["items"] == []
        assert await deliver_batch(Deliverer(sessionmaker, cb_settings)) == 0
        assert len(receiver.received) == sent
    mine = (await client.get(base, headers=alice)).json()
    assert mine["state"] == "dead"
    # Administrators only on the operators' routes.
    assert (
        await client.get(f"/api/v1/ops/callbacks/deliveries/{delivery_id}", headers=alice)
    ).status_code == 403


async def test_an_administrator_lists_and_replays_any_clients_delivery(
    client: httpx.AsyncClient,
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    alice, admin = (
        await bearer(sessionmaker, "alice"),
        await bearer(sessionmaker, "root", admin=True),
    )
    await new_secret(client, alice)
    with receiving(statuses=[500, 500, 500, 204]) as receiver:
        delivery_id = await dead_delivery(client, alice, cb_settings, sessionmaker, receiver.url())
        listed = (
            await client.get("/api/v1/ops/callbacks/deliveries?state=dead", headers=admin)
        ).json()
        assert [item["id"] for item in listed["items"]] == [delivery_id]
        shown = (
            await client.get(f"/api/v1/ops/callbacks/deliveries/{delivery_id}", headers=admin)
        ).json()
        assert shown["user_id"] is not None
        assert len(shown["attempt_log"]) == 3
        replayed = await client.post(
            f"/api/v1/ops/callbacks/deliveries/{delivery_id}/replay", headers=admin
        )
        assert replayed.status_code == 202
        await deliver_batch(Deliverer(sessionmaker, cb_settings))
    assert receiver.received[-1].headers["webhook-id"] == delivery_id
    # The admin's own list, as a client, holds none of alice's.
    assert (await client.get("/api/v1/callbacks/deliveries", headers=admin)).json()["items"] == []


async def test_deliveries_come_newest_first_in_keyset_pages(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    alice = await bearer(sessionmaker, "alice")
    await new_secret(client, alice)
    with receiving() as receiver:
        for n in range(5):
            await submit(client, alice, receiver.url(path=f"/{n}"))
    await end_tasks(sessionmaker)
    seen: list[str] = []
    cursor = ""
    for _ in range(4):
        response = await client.get(f"/api/v1/callbacks/deliveries?limit=2{cursor}", headers=alice)
        page = response.json()
        seen += [item["url"].rsplit("/", 1)[1] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == ["4", "3", "2", "1", "0"]
    bad = await client.get("/api/v1/callbacks/deliveries?cursor=abc", headers=alice)
    assert (bad.status_code, bad.json()["error"]["field"]) == (422, "cursor")


async def test_a_test_event_is_signed_and_sent_like_any_callback(
    client: httpx.AsyncClient,
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    alice = await bearer(sessionmaker, "alice")
    no_secret = await client.post(
        "/api/v1/callbacks/test", json={"callback_url": "http://hooks.example.com/t"}, headers=alice
    )
    assert (no_secret.status_code, no_secret.json()["error"]["field"]) == (422, "callback_url")
    secret = await new_secret(client, alice)
    bad = await client.post(
        "/api/v1/callbacks/test", json={"callback_url": "ftp://hooks.example.com/"}, headers=alice
    )
    assert (bad.status_code, bad.json()["error"]["field"]) == (422, "callback_url")
    with receiving() as receiver:
        sent = await client.post(
            "/api/v1/callbacks/test", json={"callback_url": receiver.url()}, headers=alice
        )
        assert sent.status_code == 202, sent.text
        assert (sent.json()["event"], sent.json()["state"]) == ("callback.test", "pending")
        assert await deliver_batch(Deliverer(sessionmaker, cb_settings)) == 1
    [got] = receiver.received
    assert verifies(secret, got)
    assert json.loads(got.body) == {"event": "callback.test", "id": sent.json()["id"], "test": True}
    shown = (
        await client.get(f"/api/v1/callbacks/deliveries/{sent.json()['id']}", headers=alice)
    ).json()
    assert shown["state"] == "delivered"


async def test_a_test_event_to_a_private_address_is_refused_by_the_ssrf_guard(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    guarded = callback_settings(settings).model_copy(update={"allow_private": False})
    alice = await bearer(sessionmaker, "alice")
    async with api_client(guarded) as http:
        await new_secret(http, alice)
        for url in ("http://127.0.0.1:8080/t", "http://[::1]/t", "http://10.0.0.5/t"):
            refused = await http.post(
                "/api/v1/callbacks/test", json={"callback_url": url}, headers=alice
            )
            assert refused.status_code == 422, url
            assert refused.json()["error"]["field"] == "callback_url"
    async with sessionmaker() as session:
        assert await deliveries_api_rows(session) == 0


async def deliveries_api_rows(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(Delivery))).scalar_one())
