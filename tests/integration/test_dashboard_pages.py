"""The dashboard over HTTP: sign-in, sessions, CSRF, and what each page shows and does."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service.ui import session as ui_session
from shared.db import outbox, tasks, users
from shared.db.models import OutboxMessage, Task
from shared.settings import Settings
from shared.tokens import hash_token, new_token
from tests.dashboard import (
    SAMPLE_REPORT,
    execute,
    make_task,
    open_client,
    page_csrf,
    sign_in,
)
from tests.helpers import make_user

Sessions = async_sessionmaker[AsyncSession]
KEY = "k" * 40


@pytest.fixture
def ui_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"ui_secret_key": SecretStr(KEY)})


@pytest.fixture
async def http(ui_settings: Settings, engine: object) -> AsyncIterator[httpx.AsyncClient]:
    async for client in open_client(ui_settings, "http://testserver"):
        yield client


@pytest.fixture
async def admin_token(sessionmaker: Sessions) -> str:
    _, token = await make_user(sessionmaker, "root", admin=True)
    return token


@pytest.fixture
async def signed_in(http: httpx.AsyncClient, admin_token: str) -> httpx.AsyncClient:
    response = await sign_in(http, admin_token)
    assert response.status_code == 303, response.text
    return http


async def task_row(sessionmaker: Sessions, task_id: uuid.UUID) -> Task:
    async with sessionmaker() as session:
        task = await tasks.get_task(session, task_id)
    assert task is not None
    return task


async def message_count(sessionmaker: Sessions, task_id: uuid.UUID) -> int:
    async with sessionmaker() as session:
        stmt = select(func.count()).where(OutboxMessage.task_id == task_id)
        return int((await session.execute(stmt)).scalar_one())


async def outbox_id_of(sessionmaker: Sessions, task_id: uuid.UUID) -> int:
    async with sessionmaker() as session:
        stmt = select(func.max(OutboxMessage.id)).where(OutboxMessage.task_id == task_id)
        return int((await session.execute(stmt)).scalar_one())


async def kill(sessionmaker: Sessions, task_id: uuid.UUID, error: str) -> int:
    outbox_id = await outbox_id_of(sessionmaker, task_id)
    async with sessionmaker() as session, session.begin():
        await outbox.mark_dead(session, outbox_id, error)
    return outbox_id


# --- sign-in, sessions, cookies ------------------------------------------------


async def test_every_page_and_action_sends_a_visitor_without_a_session_to_sign_in(
    http: httpx.AsyncClient,
) -> None:
    for path in ("/ui", "/ui/tasks?status=failed", "/ui/outbox", f"/ui/tasks/{uuid.uuid4()}"):
        response = await http.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/ui/login"), path
    assert (await http.get("/ui/tasks?status=failed")).headers["location"] == (
        "/ui/login?next=%2Fui%2Ftasks%3Fstatus%3Dfailed"
    )
    refused = await http.post("/ui/outbox/replay-dead", data={"csrf_token": "x"})
    assert refused.status_code == 303
    assert refused.headers["location"] == "/ui/login"


async def test_sign_in_trades_the_token_for_a_hardened_cookie_and_sign_out_ends_it(
    http: httpx.AsyncClient, admin_token: str
) -> None:
    form = await http.get("/ui/login")
    assert 'method="post"' in form.text
    assert form.headers["content-security-policy"].startswith("default-src 'none'")
    assert form.headers["x-frame-options"] == "DENY"

    response = await sign_in(http, admin_token, next_path="/ui/outbox")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/outbox"
    cookie = next(
        value
        for value in response.headers.get_list("set-cookie")
        if value.startswith(ui_session.SESSION_COOKIE + "=")
    )
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=lax", "path=/ui", "max-age=28800"} <= attributes
    assert "secure" not in attributes
    assert admin_token not in cookie
    assert admin_token not in response.headers["location"]

    overview = await http.get("/ui")
    assert overview.status_code == 200
    assert "root" in overview.text
    assert admin_token not in overview.text
    assert overview.headers["cache-control"] == "no-store"

    signed_out = await http.post("/ui/logout", data={"csrf_token": await page_csrf(http)})
    assert signed_out.status_code == 303
    assert signed_out.headers["location"] == "/ui/login"
    assert ui_session.SESSION_COOKIE not in http.cookies
    assert "Signed out." in (await http.get("/ui/login")).text
    assert (await http.get("/ui")).status_code == 303


async def test_the_cookie_is_secure_when_the_dashboard_is_served_over_https(
    ui_settings: Settings, admin_token: str, engine: object
) -> None:
    async for http in open_client(ui_settings, "https://testserver"):
        response = await sign_in(http, admin_token)
        cookies = response.headers.get_list("set-cookie")
        session_cookie = next(c for c in cookies if c.startswith(ui_session.SESSION_COOKIE))
        assert "secure" in session_cookie.lower()


async def test_sign_in_refuses_bad_tokens_non_admins_and_forms_without_their_token(
    http: httpx.AsyncClient, sessionmaker: Sessions, admin_token: str
) -> None:
    wrong = new_token()
    refused = await sign_in(http, wrong)
    assert refused.status_code == 401
    assert wrong not in refused.text
    assert "invalid or revoked" in refused.text

    _, user_token = await make_user(sessionmaker, "plain")
    not_admin = await sign_in(http, user_token)
    assert not_admin.status_code == 403
    assert "for administrators" in not_admin.text
    assert ui_session.SESSION_COOKIE not in http.cookies

    without_form_token = await http.post("/ui/login", data={"token": admin_token})
    assert without_form_token.status_code == 403
    http.cookies.clear()
    form = await http.get("/ui/login")
    assert form.status_code == 200
    cross_site = await http.post(
        "/ui/login",
        data={"token": admin_token, "csrf_token": "whatever"},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403
    assert ui_session.SESSION_COOKIE not in http.cookies


async def test_a_session_ends_when_its_token_is_revoked_or_replaced_and_403s_once_not_admin(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions
) -> None:
    assert (await signed_in.get("/ui")).status_code == 200
    async with sessionmaker() as session, session.begin():
        await users.set_user_token(session, "root", hash_token(new_token()), is_admin=True)
    assert (await signed_in.get("/ui")).status_code == 303

    _, token = await make_user(sessionmaker, "ops", admin=True)
    assert (await sign_in(signed_in, token)).status_code == 303
    await execute(sessionmaker, "UPDATE users SET is_admin = false WHERE name = 'ops'")
    demoted = await signed_in.get("/ui")
    assert demoted.status_code == 403
    assert "for administrators" in demoted.text
    await execute(sessionmaker, "UPDATE users SET revoked_at = now() WHERE name = 'ops'")
    assert (await signed_in.get("/ui")).status_code == 303


async def test_forged_and_expired_session_cookies_are_refused(
    http: httpx.AsyncClient, sessionmaker: Sessions
) -> None:
    user, token = await make_user(sessionmaker, "root", admin=True)
    good = ui_session.SessionCodec(KEY, 3600)
    _, value = good.issue(user.id, hash_token(token))
    assert good.load(value) is not None
    expired = ui_session.SessionCodec(KEY, 3600, clock=lambda: time.time() - 7200)
    _, old_value = expired.issue(user.id, hash_token(token))
    forged = ui_session.SessionCodec("x" * 40, 3600).issue(user.id, hash_token(token))[1]
    for cookie in (old_value, forged, value[:-2] + "xx", "garbage"):
        http.cookies.set(ui_session.SESSION_COOKIE, cookie, path="/ui")
        assert (await http.get("/ui")).status_code == 303
    http.cookies.set(ui_session.SESSION_COOKIE, value, path="/ui")
    assert (await http.get("/ui")).status_code == 200


# --- CSRF ----------------------------------------------------------------------


async def test_actions_without_the_session_csrf_token_or_from_another_site_change_nothing(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    task_id = await make_task(sessionmaker, user.id, "a.example.com")
    cancel = f"/ui/tasks/{task_id}/cancel"
    token = await page_csrf(signed_in)
    attempts = [
        ({}, {}),
        ({"csrf_token": "not-the-token"}, {}),
        ({"csrf_token": token}, {"Origin": "https://evil.example"}),
        ({"csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}),
    ]
    for data, headers in attempts:
        response = await signed_in.post(cancel, data=data, headers=headers)
        assert response.status_code == 403, (data, headers)
        assert "Form refused" in response.text
    assert (await task_row(sessionmaker, task_id)).status == "pending"

    same_site = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    done = await signed_in.post(cancel, data={"csrf_token": token}, headers=same_site)
    assert done.status_code == 303
    assert (await task_row(sessionmaker, task_id)).status == "cancelled"


# --- pages -----------------------------------------------------------------------


async def test_overview_shows_states_backlog_dead_rows_charts_and_the_verdict(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    done = await make_task(sessionmaker, user.id, "done.example.com")
    await make_task(sessionmaker, user.id, "waiting.example.com")
    dead = await make_task(sessionmaker, user.id, "dead.example.com")
    await execute(
        sessionmaker,
        "UPDATE outbox SET published_at = now() WHERE task_id = :id",
        id=done,
    )
    await execute(
        sessionmaker,
        "UPDATE tasks SET status = 'succeeded', started_at = now(), finished_at = now(),"
        " updated_at = now() WHERE id = :id",
        id=done,
    )
    await kill(sessionmaker, dead, "unknown actor 'nope'")

    page = await signed_in.get("/ui")
    assert page.status_code == 200
    html = page.text
    assert "Unhealthy" in html
    assert "dead outbox rows: 1" in html
    assert html.count('<svg class="chart"') == 2
    assert '<meta http-equiv="refresh" content="10">' in html
    for status in ("pending", "queued", "running", "succeeded", "failed", "cancelled"):
        assert f"/ui/tasks?status={status}" in html
    assert "No relay holds the leader lock" in html
    assert "No worker has fetched from the broker" in html
    assert "<tr><td>alice</td><td>interactive</td><td>1</td><td>0</td></tr>" in html


async def test_task_list_filters_by_state_user_domain_and_creation_time(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions
) -> None:
    alice, _ = await make_user(sessionmaker, "alice")
    bob, _ = await make_user(sessionmaker, "bob")
    old = await make_task(sessionmaker, alice.id, "old.example.com")
    await execute(
        sessionmaker, "UPDATE tasks SET created_at = '2020-01-01T00:00Z' WHERE id = :id", id=old
    )
    await make_task(sessionmaker, alice.id, "shop.example.com")
    failed = await make_task(sessionmaker, bob.id, "bob-shop.example.org")
    await execute(sessionmaker, "UPDATE tasks SET status = 'failed' WHERE id = :id", id=failed)

    async def domains(query: str) -> set[str]:
        html = (await signed_in.get(f"/ui/tasks?{query}")).text
        names = ("old.example.com", "shop.example.com", "bob-shop.example.org")
        return {name for name in names if f">{name}</a>" in html}

    assert await domains("") == {"old.example.com", "shop.example.com", "bob-shop.example.org"}
    assert await domains("status=failed") == {"bob-shop.example.org"}
    assert await domains("user=alice") == {"old.example.com", "shop.example.com"}
    assert await domains("domain=SHOP") == {"shop.example.com", "bob-shop.example.org"}
    assert await domains("domain=%25") == set()
    assert await domains("until=2021-01-01T00:00") == {"old.example.com"}
    assert await domains("since=2021-01-01T00:00&user=alice") == {"shop.example.com"}
    odd = await signed_in.get("/ui/tasks?status=bogus&since=yesterday")
    assert odd.status_code == 200
    assert "unknown state" in odd.text
    assert "is not a date and time" in odd.text


async def test_task_page_shows_its_timeline_in_ms_its_report_and_its_outbox_rows(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    task_id = await make_task(sessionmaker, user.id, "shop.example.com")
    await execute(
        sessionmaker,
        "UPDATE outbox SET published_at = created_at + interval '40 ms' WHERE task_id = :id",
        id=task_id,
    )
    await execute(
        sessionmaker,
        "UPDATE tasks SET status = 'succeeded', attempts = 1,"
        " started_at = created_at + interval '150 ms',"
        " finished_at = created_at + interval '900 ms',"
        " updated_at = now(), result = CAST(:result AS jsonb) WHERE id = :id",
        id=task_id,
        result=json.dumps(SAMPLE_REPORT),
    )
    page = await signed_in.get(f"/ui/tasks/{task_id}")
    assert page.status_code == 200
    html = page.text
    for gap in ("+40 ms", "+110 ms", "+750 ms"):
        assert gap in html
    assert "Created to finished: 900 ms" in html
    for fact in ("Welcome to the shop", "mail.example.com", "v=spf1 -all", "the acme shop"):
        assert fact in html
    assert "1 of 3" in html
    outbox_id = await outbox_id_of(sessionmaker, task_id)
    assert f"<td>{outbox_id}</td>" in html
    assert "/retry" not in html
    assert "/cancel" not in html

    missing = await signed_in.get(f"/ui/tasks/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert (await signed_in.get("/ui/tasks/not-a-uuid")).status_code == 404


async def test_retry_and_cancel_go_through_the_apis_own_transitions(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    task_id = await make_task(sessionmaker, user.id, "shop.example.com")
    page = f"/ui/tasks/{task_id}"
    token = await page_csrf(signed_in, page)

    cancelled = await signed_in.post(f"{page}/cancel", data={"csrf_token": token, "back": page})
    assert cancelled.headers["location"] == page
    assert (await task_row(sessionmaker, task_id)).status == "cancelled"
    assert "Task cancelled." in (await signed_in.get(page)).text

    again = await signed_in.post(f"{page}/cancel", data={"csrf_token": token})
    assert again.status_code == 303
    assert "a cancelled task cannot be cancelled" in (await signed_in.get(page)).text

    retried = await signed_in.post(f"{page}/retry", data={"csrf_token": token})
    assert retried.status_code == 303
    task = await task_row(sessionmaker, task_id)
    assert (task.status, task.attempts) == ("pending", 0)
    assert await message_count(sessionmaker, task_id) == 2
    assert "it is pending" in (await signed_in.get(page)).text

    evil_back = await signed_in.post(
        f"{page}/cancel", data={"csrf_token": token, "back": "https://evil.example/x"}
    )
    assert evil_back.headers["location"] == "/ui"


async def test_replay_one_dead_row_then_all_revives_the_tasks_they_failed(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    first = await make_task(sessionmaker, user.id, "one.example.com")
    second = await make_task(sessionmaker, user.id, "two.example.com")
    first_row = await kill(sessionmaker, first, "broker refused the message")
    await kill(sessionmaker, second, "broker refused the message")
    assert (await task_row(sessionmaker, first)).status == "failed"

    outbox_page = await signed_in.get("/ui/outbox")
    assert "broker refused the message" in outbox_page.text
    assert "Replay all dead rows (2)" in outbox_page.text
    token = await page_csrf(signed_in, "/ui/outbox")

    one = await signed_in.post(f"/ui/outbox/{first_row}/replay", data={"csrf_token": token})
    assert one.headers["location"] == "/ui/outbox"
    assert (await task_row(sessionmaker, first)).status == "pending"
    assert (await task_row(sessionmaker, second)).status == "failed"
    shown = (await signed_in.get("/ui/outbox")).text
    assert "Replayed 1 dead row; 1 task(s) back to pending." in shown

    twice = await signed_in.post(f"/ui/outbox/{first_row}/replay", data={"csrf_token": token})
    assert twice.status_code == 303
    assert "is unpublished, not dead: nothing to replay" in (await signed_in.get("/ui/outbox")).text

    everything = await signed_in.post("/ui/outbox/replay-dead", data={"csrf_token": token})
    assert everything.status_code == 303
    assert (await task_row(sessionmaker, second)).status == "pending"
    assert "No dead rows." in (await signed_in.get("/ui/outbox")).text


async def test_text_from_scanned_sites_and_errors_is_escaped(
    signed_in: httpx.AsyncClient, sessionmaker: Sessions
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    task_id = await make_task(sessionmaker, user.id, "shop.example.com")
    hostile = "<script>alert(1)</script>"
    report = {**SAMPLE_REPORT, "http": {**SAMPLE_REPORT["http"], "title": hostile}}
    await execute(
        sessionmaker,
        "UPDATE tasks SET status = 'succeeded', result = CAST(:result AS jsonb) WHERE id = :id",
        id=task_id,
        result=json.dumps(report),
    )
    await kill(sessionmaker, task_id, f"<img src=x onerror=alert(1)>{hostile}")
    for path in (f"/ui/tasks/{task_id}", "/ui/outbox", "/ui/tasks"):
        html = (await signed_in.get(path)).text
        assert "<script>" not in html, path
        assert "<img src=x" not in html, path
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt;"
        in (await signed_in.get(f"/ui/tasks/{task_id}")).text
    )
