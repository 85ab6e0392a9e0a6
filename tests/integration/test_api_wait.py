"""GET with `wait`: answered when the task (or every task of the batch) ends, woken by a
finish hint or, without one, by the poll, holding no connection while it waits."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service import batch_service
from api_service.app import create_app
from api_service.waiting import FinishWaiters
from shared import wakeups
from shared.settings import Settings
from tests.helpers import eventually, make_user

# Far beyond the test's own timeout: a waiter that is not woken fails the test.
LONG_WAIT_S = 600


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield app, http


@pytest.fixture
async def api(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with serving(settings.model_copy(update={"wait_max_s": LONG_WAIT_S})) as served:
        yield served


@pytest.fixture
async def headers(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, str]:
    _, token = await make_user(sessionmaker, "alice")
    return {"Authorization": f"Bearer {token}"}


def waiters_of(app: FastAPI) -> FinishWaiters:
    waiters: FinishWaiters = app.state.waiters
    return waiters


async def finish(sessionmaker: async_sessionmaker[AsyncSession], where: str, **params: Any) -> None:
    """A terminal write straight in SQL, as any code path that ends a task makes it."""
    async with sessionmaker() as session, session.begin():
        await session.execute(
            text(f"UPDATE tasks SET status = 'succeeded', finished_at = now() WHERE {where}"),
            params,
        )


async def test_a_task_waiter_is_woken_by_the_terminal_write(
    api: tuple[FastAPI, httpx.AsyncClient],
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    app, http = api
    await eventually(lambda: waiters_of(app).connected, "the API to subscribe")
    task = (
        await http.post("/api/v1/tasks", json={"target_domain": "w.example.com"}, headers=headers)
    ).json()
    pool = app.state.engine.pool

    waiting = asyncio.create_task(
        http.get(f"/api/v1/tasks/{task['id']}", params={"wait": LONG_WAIT_S}, headers=headers)
    )
    await eventually(lambda: waiters_of(app).count == 1, "the request to wait")
    # Waiting holds no pooled connection. Its poll borrows one for a moment each second (and
    # the create's session may still be on its way back), so the pool must be seen empty while
    # the request still waits, not at one instant that may fall on a poll.
    await eventually(lambda: pool.checkedout() == 0, "the waiter to hold no pooled connection")
    assert not waiting.done()
    await finish(sessionmaker, "id = CAST(:id AS uuid)", id=task["id"])
    answered = await waiting

    assert answered.status_code == 200
    assert answered.json()["status"] == "succeeded"
    assert waiters_of(app).count == 0


async def test_a_finished_task_is_answered_at_once_without_a_waiter(
    api: tuple[FastAPI, httpx.AsyncClient],
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    app, http = api
    task = (
        await http.post("/api/v1/tasks", json={"target_domain": "d.example.com"}, headers=headers)
    ).json()
    await finish(sessionmaker, "true")
    waiters_of(app).max_waiters = 0  # any waiter would be refused

    answered = await http.get(f"/api/v1/tasks/{task['id']}", params={"wait": 5}, headers=headers)

    assert (answered.status_code, answered.json()["status"]) == (200, "succeeded")


async def test_a_batch_waiter_answers_only_when_every_task_has_ended(
    api: tuple[FastAPI, httpx.AsyncClient],
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, http = api
    await eventually(lambda: waiters_of(app).connected, "the API to subscribe")
    body = {"tasks": [{"target_domain": "one.example.com"}, {"target_domain": "two.example.com"}]}
    batch = (await http.post("/api/v1/batches", json=body, headers=headers)).json()
    reads: list[bool] = []
    original = batch_service.read_batch

    async def counted(*args: Any, **kwargs: Any) -> batch_service.BatchView:
        view = await original(*args, **kwargs)
        reads.append(view.done)
        return view

    monkeypatch.setattr(batch_service, "read_batch", counted)
    waiting = asyncio.create_task(
        http.get(f"/api/v1/batches/{batch['id']}", params={"wait": LONG_WAIT_S}, headers=headers)
    )
    await eventually(lambda: waiters_of(app).count == 1, "the request to wait")
    reads_before = len(reads)

    await finish(sessionmaker, "target_domain = 'one.example.com'")
    # The finish hint the worker sends after such a write (a batch's first end is no end of
    # the batch, so the poll alone would not wake the waiter for it).
    one = next(t for t in batch["tasks"] if t["target_domain"] == "one.example.com")
    await app.state.hints.finished([(uuid.UUID(one["id"]), uuid.UUID(batch["id"]))], False)
    # Woken, it read the batch again, found a task still pending and went on waiting.
    await eventually(lambda: len(reads) > reads_before, "the waiter to read again")
    assert not waiting.done()
    assert reads[-1] is False

    await finish(sessionmaker, "target_domain = 'two.example.com'")
    answered = (await waiting).json()

    assert (answered["done"], answered["counts"]) == (True, {"succeeded": 2})
    # The page is read fresh too, not from the rows the waiting request read before.
    assert [t["status"] for t in answered["tasks"]] == ["succeeded", "succeeded"]
    assert answered["finished_at"] is not None


@pytest.mark.parametrize("wait", ["-1", "601", "soon", "nan"])
async def test_a_wait_out_of_bounds_is_422_naming_wait(
    api: tuple[FastAPI, httpx.AsyncClient], headers: dict[str, str], wait: str
) -> None:
    _, http = api
    task = (
        await http.post("/api/v1/tasks", json={"target_domain": "v.example.com"}, headers=headers)
    ).json()
    batch = (
        await http.post(
            "/api/v1/batches", json={"tasks": [{"target_domain": "v.example.com"}]}, headers=headers
        )
    ).json()

    for path in (f"/api/v1/tasks/{task['id']}", f"/api/v1/batches/{batch['id']}"):
        refused = await http.get(path, params={"wait": wait}, headers=headers)
        assert refused.status_code == 422, (path, refused.text)
        assert refused.json()["error"]["field"] == "wait"


async def test_over_the_waiter_limit_a_request_gets_503_at_once(
    settings: Settings,
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    limited = settings.model_copy(update={"wait_max_waiters": 1, "wait_max_s": LONG_WAIT_S})
    async with serving(limited) as (app, http):
        task = (
            await http.post(
                "/api/v1/tasks", json={"target_domain": "l.example.com"}, headers=headers
            )
        ).json()
        path = f"/api/v1/tasks/{task['id']}"
        first = asyncio.create_task(http.get(path, params={"wait": LONG_WAIT_S}, headers=headers))
        await eventually(lambda: waiters_of(app).count == 1, "the first request to wait")

        second = await http.get(path, params={"wait": 10}, headers=headers)
        at_once = await http.get(path, headers=headers)
        await finish(sessionmaker, "true")
        assert (await first).json()["status"] == "succeeded"

    assert second.status_code == 503
    assert (second.json()["error"]["code"], second.json()["error"]["field"]) == (
        "too_many_waiters",
        "wait",
    )
    assert at_once.status_code == 200


async def test_another_users_task_is_404_at_once_even_with_wait(
    api: tuple[FastAPI, httpx.AsyncClient],
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    app, http = api
    task = (
        await http.post("/api/v1/tasks", json={"target_domain": "s.example.com"}, headers=headers)
    ).json()
    _, bob = await make_user(sessionmaker, "bob")

    refused = await http.get(
        f"/api/v1/tasks/{task['id']}",
        params={"wait": LONG_WAIT_S},
        headers={"Authorization": f"Bearer {bob}"},
    )

    assert refused.status_code == 404
    assert waiters_of(app).count == 0


async def test_a_client_over_its_share_of_waiters_gets_429_and_others_still_wait(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    share = settings.model_copy(
        update={"wait_max_waiters_per_client": 2, "wait_max_s": LONG_WAIT_S}
    )
    _, alice = await make_user(sessionmaker, "alice")
    _, bob = await make_user(sessionmaker, "bob")
    as_alice, as_bob = ({"Authorization": f"Bearer {t}"} for t in (alice, bob))
    async with serving(share) as (app, http):
        await eventually(lambda: waiters_of(app).connected, "the API to subscribe")

        async def create(domain: str, headers: dict[str, str]) -> str:
            body = {"target_domain": domain}
            task_id: str = (await http.post("/api/v1/tasks", json=body, headers=headers)).json()[
                "id"
            ]
            return task_id

        def wait_for(task_id: str, headers: dict[str, str]) -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(
                http.get(f"/api/v1/tasks/{task_id}", params={"wait": LONG_WAIT_S}, headers=headers)
            )

        alices = [await create(f"a{n}.example.com", as_alice) for n in range(3)]
        bobs = await create("b.example.com", as_bob)
        alice_waiting = [wait_for(task_id, as_alice) for task_id in alices[:2]]
        await eventually(lambda: waiters_of(app).count == 2, "alice's share to fill")

        refused = await http.get(f"/api/v1/tasks/{alices[2]}", params={"wait": 1}, headers=as_alice)
        bob_waiting = wait_for(bobs, as_bob)
        await eventually(lambda: waiters_of(app).count == 3, "bob's request to wait")
        await finish(sessionmaker, "id = CAST(:id AS uuid)", id=bobs)
        bob_answer = await bob_waiting
        assert not any(waiting.done() for waiting in alice_waiting)
        untouched = await http.get(f"/api/v1/tasks/{alices[2]}", headers=as_alice)
        await finish(sessionmaker, "true")
        alice_answers = await asyncio.gather(*alice_waiting)

    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["field"]) == ("too_many_client_waiters", "wait")
    assert "SCAN_WAIT_MAX_WAITERS_PER_CLIENT" in error["message"]
    # Her soonest wait is over by then, so a place is certainly free.
    assert 1 <= int(refused.headers["Retry-After"]) <= LONG_WAIT_S
    assert error["retry_after_s"] == int(refused.headers["Retry-After"])
    assert (bob_answer.status_code, bob_answer.json()["status"]) == (200, "succeeded")
    assert (untouched.status_code, untouched.json()["status"]) == (200, "pending")
    assert [(a.status_code, a.json()["status"]) for a in alice_answers] == [(200, "succeeded")] * 2


async def test_with_every_hint_dropped_a_waiter_is_answered_within_one_poll_interval(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], headers: dict[str, str]
) -> None:
    poll_s = 0.3
    no_hints = settings.model_copy(
        update={"wakeup_hints": False, "wait_poll_interval_s": poll_s, "wait_max_s": LONG_WAIT_S}
    )
    async with serving(no_hints) as (app, http):
        assert not waiters_of(app).connected
        body = {"target_domain": "quiet.example.com"}
        task = (await http.post("/api/v1/tasks", json=body, headers=headers)).json()
        waiting = asyncio.create_task(
            http.get(f"/api/v1/tasks/{task['id']}", params={"wait": LONG_WAIT_S}, headers=headers)
        )
        await eventually(lambda: waiters_of(app).count == 1, "the request to wait")
        await finish(sessionmaker, "id = CAST(:id AS uuid)", id=task["id"])
        finished = asyncio.get_running_loop().time()
        # One poll interval, and a read, with room for a shared machine.
        answered = await asyncio.wait_for(waiting, poll_s + 1.0)
        late_s = asyncio.get_running_loop().time() - finished

    assert answered.json()["status"] == "succeeded"
    assert late_s <= poll_s + 1.0


async def test_a_finish_hint_answers_a_waiter_long_before_the_poll(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], headers: dict[str, str]
) -> None:
    never = settings.model_copy(update={"wait_poll_interval_s": 600, "wait_max_s": LONG_WAIT_S})
    async with serving(never) as (app, http):
        await eventually(lambda: waiters_of(app).connected, "the API to subscribe")
        body = {"target_domain": "hinted.example.com"}
        task = (await http.post("/api/v1/tasks", json=body, headers=headers)).json()
        waiting = asyncio.create_task(
            http.get(f"/api/v1/tasks/{task['id']}", params={"wait": LONG_WAIT_S}, headers=headers)
        )
        await eventually(lambda: waiters_of(app).count == 1, "the request to wait")
        await finish(sessionmaker, "id = CAST(:id AS uuid)", id=task["id"])
        hints = wakeups.Hints(wakeups.create_client(settings))
        await hints.finished([(uuid.UUID(task["id"]), None)], callbacks=False)
        await hints.aclose()
        answered = await asyncio.wait_for(waiting, 10)

    assert answered.json()["status"] == "succeeded"
