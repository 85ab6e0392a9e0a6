"""The dashboard's callback deliveries: listed by state and paged, shown on their task's
page, counted on the overview, and replayed (admins only, CSRF-checked) as
`scanctl callbacks replay` does."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service.ui.routes import callbacks as callbacks_page
from shared import wakeups
from shared.db import callbacks, tasks
from shared.db.models import Delivery
from shared.messages import scan_entry
from shared.settings import Settings
from tests.callbacks import end_tasks
from tests.dashboard import execute, make_task, open_client, page_csrf, sign_in
from tests.helpers import make_user, published

Sessions = async_sessionmaker[AsyncSession]
KEY = "k" * 40
# A receiver may keep a token of its own in the URL's path or query: never shown.
HOOK_URL = "https://hooks.example.com:8443/hooks/path-token-4f1c?key=query-token-9d2e"
SECRET = "whsec_do-not-show-this-secret"
ROW_ID = re.compile(r'<td>(\d+)</td>\s*<td><code title="')


@pytest.fixture
async def http(settings: Settings, engine: object) -> AsyncIterator[httpx.AsyncClient]:
    ui_settings = settings.model_copy(update={"ui_secret_key": SecretStr(KEY)})
    async for client in open_client(ui_settings, "http://testserver"):
        yield client


@pytest.fixture
async def signed_in(http: httpx.AsyncClient, sessionmaker: Sessions) -> httpx.AsyncClient:
    _, token = await make_user(sessionmaker, "root", admin=True)
    response = await sign_in(http, token)
    assert response.status_code == 303, response.text
    return http


@pytest.fixture
async def owner_id(sessionmaker: Sessions) -> int:
    user, _ = await make_user(sessionmaker, "alice")
    async with sessionmaker() as session, session.begin():
        await callbacks.rotate_secret(session, user.id, SECRET, keep_previous=False)
    return user.id


async def ended_task(sessionmaker: Sessions, user_id: int, domain: str) -> tuple[uuid.UUID, int]:
    """A task with a callback URL, ended: (its id, the id of the delivery its end wrote)."""
    task_id = uuid.uuid4()
    new = tasks.NewTask(user_id, domain, {"keywords": ["acme"]}, 3, callback_url=HOOK_URL)
    async with sessionmaker() as session, session.begin():
        entry = scan_entry(task_id, "scans")
        await tasks.insert_task_with_message(session, task_id, new, entry)
    await end_tasks(sessionmaker, where=f"id = '{task_id}'")
    async with sessionmaker() as session:
        stmt = select(Delivery.id).where(Delivery.task_id == task_id)
        return task_id, int((await session.execute(stmt)).scalar_one())


async def make_dead(sessionmaker: Sessions, row_id: int, error: str = "HTTP 500") -> None:
    await execute(
        sessionmaker,
        "UPDATE deliveries SET dead_at = now(), attempts = 3, last_status = 500,"
        " last_error = :error WHERE id = :id",
        id=row_id,
        error=error,
    )


async def delivery(sessionmaker: Sessions, row_id: int) -> Delivery:
    async with sessionmaker() as session:
        row = await session.get(Delivery, row_id)
    assert row is not None
    return row


async def due_now(sessionmaker: Sessions, row_id: int) -> bool:
    async with sessionmaker() as session:
        stmt = select(Delivery.available_at <= func.now()).where(Delivery.id == row_id)
        return bool((await session.execute(stmt)).scalar_one())


def shown_ids(html: str) -> list[int]:
    return [int(found) for found in ROW_ID.findall(html)]


async def test_the_page_lists_deliveries_by_state_showing_only_the_receivers_host(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions, owner_id: int
) -> None:
    waiting_task, waiting = await ended_task(sessionmaker, owner_id, "waiting.example.com")
    _, dead = await ended_task(sessionmaker, owner_id, "dead.example.com")
    _, done = await ended_task(sessionmaker, owner_id, "done.example.com")
    await make_dead(sessionmaker, dead, "HTTP 500 <script>alert(1)</script>")
    await execute(
        sessionmaker,
        "UPDATE deliveries SET delivered_at = now(), attempts = 1, last_status = 204"
        " WHERE id = :id",
        id=done,
    )

    response = await signed_in.get("/ui/callbacks")
    assert response.status_code == 200
    html = response.text
    assert shown_ids(html) == [done, dead, waiting]
    assert 'href="/ui/callbacks" aria-current="page"' in html
    assert html.count("hooks.example.com:8443") >= 3
    for hidden in (
        "path-token",
        "query-token",
        "/hooks/",
        SECRET,
        "Scan-Signature",
        "webhook-signature",
    ):
        assert hidden not in html, hidden
    assert "<script>" not in html
    assert "HTTP 500 &lt;script&gt;" in html
    assert f'href="/ui/tasks/{waiting_task}"' in html
    assert "task.finished" in html
    assert "alice" in html
    assert "<td>204</td>" in html

    for state, expected in (("pending", [waiting]), ("dead", [dead]), ("delivered", [done])):
        page = (await signed_in.get(f"/ui/callbacks?state={state}")).text
        assert shown_ids(page) == expected, state
        assert f'<option value="{state}" selected>' in page
    dead_page = (await signed_in.get("/ui/callbacks?state=dead")).text
    assert f'action="/ui/callbacks/{dead}/replay"' in dead_page
    pending_page = (await signed_in.get("/ui/callbacks?state=pending")).text
    assert not re.search(r"/ui/callbacks/\d+/replay", pending_page)

    odd = await signed_in.get("/ui/callbacks?state=bogus&before=x")
    assert odd.status_code == 200
    assert "unknown state" in odd.text
    assert "the page cursor is not valid" in odd.text
    assert shown_ids(odd.text) == [done, dead, waiting]


async def test_the_page_shows_the_newest_first_and_pages_to_older_ones(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions, owner_id: int
) -> None:
    total = callbacks_page.PAGE_SIZE + 5
    await execute(
        sessionmaker,
        "INSERT INTO deliveries (delivery_id, user_id, url, payload)"
        ' SELECT gen_random_uuid(), :user_id, :url, \'{"event": "task.finished"}\''
        " FROM generate_series(1, CAST(:total AS integer))",
        user_id=owner_id,
        url=HOOK_URL,
        total=total,
    )
    async with sessionmaker() as session:
        ids = sorted((await session.execute(select(Delivery.id))).scalars(), reverse=True)

    first = (await signed_in.get("/ui/callbacks?state=pending")).text
    assert shown_ids(first) == ids[: callbacks_page.PAGE_SIZE]
    older = re.search(r'<a href="([^"]+)">older', first)
    assert older is not None
    assert "newest</a>" not in first
    second = (await signed_in.get(older.group(1).replace("&amp;", "&"))).text
    assert shown_ids(second) == ids[callbacks_page.PAGE_SIZE :]
    assert "older →" not in second
    assert '<a href="/ui/callbacks?state=pending">← newest</a>' in second


async def test_replaying_a_dead_delivery_makes_it_due_now_with_the_same_delivery_id(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions, owner_id: int, redis_client: redis.Redis
) -> None:
    _, first = await ended_task(sessionmaker, owner_id, "one.example.com")
    _, second = await ended_task(sessionmaker, owner_id, "two.example.com")
    for row_id in (first, second):
        await make_dead(sessionmaker, row_id)
    before = await delivery(sessionmaker, first)
    listing = await signed_in.get("/ui/callbacks?state=dead")
    assert "Replay all dead callbacks (2)" in listing.text
    token = await page_csrf(signed_in, "/ui/callbacks?state=dead")

    # The relays are woken as by `scanctl callbacks replay`.
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(wakeups.CALLBACKS)
    try:
        back = "/ui/callbacks?state=dead"
        one = await signed_in.post(
            f"/ui/callbacks/{first}/replay", data={"csrf_token": token, "back": back}
        )
        assert one.status_code == 303
        assert one.headers["location"] == back
        after = await delivery(sessionmaker, first)
        assert (after.dead_at, after.attempts) == (None, 0)
        assert after.delivery_id == before.delivery_id
        assert await due_now(sessionmaker, first)
        assert (await delivery(sessionmaker, second)).dead_at is not None
        shown = (await signed_in.get(back)).text
        assert "Replayed 1 dead delivery: due now, same delivery id." in shown
        assert shown_ids(shown) == [second]
        assert await published(pubsub) == [(wakeups.CALLBACKS, "")], "the relays were hinted"
    finally:
        pubsub.close()

    twice = await signed_in.post(f"/ui/callbacks/{first}/replay", data={"csrf_token": token})
    assert twice.headers["location"] == "/ui/callbacks"
    assert f"delivery {first} is pending, not dead" in (await signed_in.get("/ui/callbacks")).text
    missing = await signed_in.post("/ui/callbacks/999999999/replay", data={"csrf_token": token})
    assert missing.status_code == 303
    assert "no delivery 999999999" in (await signed_in.get("/ui/callbacks")).text

    everything = await signed_in.post("/ui/callbacks/replay-dead", data={"csrf_token": token})
    assert everything.status_code == 303
    assert (await delivery(sessionmaker, second)).dead_at is None
    assert "No dead delivery." in (await signed_in.get("/ui/callbacks?state=dead")).text


async def test_replay_is_refused_without_the_csrf_token_from_another_site_and_to_non_admins(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions, owner_id: int
) -> None:
    _, dead = await ended_task(sessionmaker, owner_id, "dead.example.com")
    await make_dead(sessionmaker, dead)
    token = await page_csrf(signed_in, "/ui/callbacks")
    attempts = [
        ({}, {}),
        ({"csrf_token": "not-the-token"}, {}),
        ({"csrf_token": token}, {"Origin": "https://evil.example"}),
        ({"csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}),
    ]
    for action in (f"/ui/callbacks/{dead}/replay", "/ui/callbacks/replay-dead"):
        for data, headers in attempts:
            response = await signed_in.post(action, data=data, headers=headers)
            assert response.status_code == 403, (action, data, headers)
            assert "Form refused" in response.text
    assert (await delivery(sessionmaker, dead)).dead_at is not None

    await execute(sessionmaker, "UPDATE users SET is_admin = false WHERE name = 'root'")
    demoted = await signed_in.post(f"/ui/callbacks/{dead}/replay", data={"csrf_token": token})
    assert demoted.status_code == 403
    assert "for administrators" in demoted.text
    assert (await signed_in.get("/ui/callbacks")).status_code == 403
    assert (await delivery(sessionmaker, dead)).dead_at is not None

    signed_in.cookies.clear()
    for path in ("/ui/callbacks", "/ui/callbacks?state=dead"):
        response = await signed_in.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/login?next=%2Fui%2Fcallbacks")
    anonymous = await signed_in.post("/ui/callbacks/replay-dead", data={"csrf_token": token})
    assert anonymous.headers["location"] == "/ui/login"
    assert (await delivery(sessionmaker, dead)).dead_at is not None


async def test_a_tasks_page_shows_its_delivery_and_replays_it_back_to_the_task(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions, owner_id: int
) -> None:
    task_id, dead = await ended_task(sessionmaker, owner_id, "hooked.example.com")
    await make_dead(sessionmaker, dead, "connection: ConnectError")
    here = f"/ui/tasks/{task_id}"
    html = (await signed_in.get(here)).text
    assert "Completion callback" in html
    assert "hooks.example.com:8443" in html
    assert "path-token" not in html
    assert "connection: ConnectError" in html
    assert shown_ids(html) == [dead]
    assert f'action="/ui/callbacks/{dead}/replay"' in html

    token = await page_csrf(signed_in, here)
    replayed = await signed_in.post(
        f"/ui/callbacks/{dead}/replay", data={"csrf_token": token, "back": here}
    )
    assert replayed.headers["location"] == here
    assert "Replayed 1 dead delivery" in (await signed_in.get(here)).text
    assert (await delivery(sessionmaker, dead)).dead_at is None

    plain = await make_task(sessionmaker, owner_id, "plain.example.com")
    assert "Completion callback" not in (await signed_in.get(f"/ui/tasks/{plain}")).text


async def test_the_overview_counts_pending_and_dead_callbacks(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions, owner_id: int
) -> None:
    for domain in ("a.example.com", "b.example.com"):
        await ended_task(sessionmaker, owner_id, domain)
    _, dead = await ended_task(sessionmaker, owner_id, "c.example.com")
    await make_dead(sessionmaker, dead)
    html = (await signed_in.get("/ui")).text
    tile = re.search(r'<a class="tile warn" href="/ui/callbacks">(.*?)</a>', html, re.DOTALL)
    assert tile is not None, "a warning tile linking to the callbacks page"
    assert '<span class="value">2</span>' in tile.group(1)
    assert "pending · 1 dead" in tile.group(1)
    assert re.search(r'<nav>.*<a href="/ui/callbacks"[^>]*>Callbacks</a>.*</nav>', html, re.DOTALL)
