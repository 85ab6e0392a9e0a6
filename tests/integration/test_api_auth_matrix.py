"""Who may do what: every endpoint refuses a missing, wrong or revoked token with 401, another
user's task is indistinguishable from a missing one, admin endpoints refuse other users with 403,
and no refusal carries data or echoes a token."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from shared.db import users
from shared.db.models import Task
from tests.helpers import count_rows, make_user

ENDPOINTS = [
    ("POST", "/api/v1/tasks"),
    ("GET", "/api/v1/tasks"),
    ("GET", "/api/v1/tasks/{id}"),
    ("POST", "/api/v1/tasks/{id}/retry"),
    ("POST", "/api/v1/tasks/{id}/cancel"),
    ("POST", "/api/v1/batches"),
    ("GET", "/api/v1/batches/{id}"),
    ("POST", "/api/v1/callbacks/secret"),
    ("GET", "/api/v1/ops/health"),
]
TASK_ENDPOINTS = [(m, p) for m, p in ENDPOINTS if p.startswith("/api/v1/tasks/{id}")]
BODIES = {
    "/api/v1/tasks": {"target_domain": "new.example.com"},
    "/api/v1/batches": {"tasks": [{"target_domain": "new.example.com"}]},
}


@dataclass
class People:
    alice: str
    bob: str
    admin: str
    revoked: str
    alice_task: str


@pytest.fixture
async def people(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> People:
    _, alice = await make_user(sessionmaker, "alice")
    _, bob = await make_user(sessionmaker, "bob")
    _, admin = await make_user(sessionmaker, "root", admin=True)
    _, revoked = await make_user(sessionmaker, "carol")
    async with sessionmaker() as session, session.begin():
        assert await users.revoke_user(session, "carol")
    created = await client.post(
        "/api/v1/tasks", json={"target_domain": "secret.example.com"}, headers=bearer(alice)
    )
    assert created.status_code == 201
    return People(alice, bob, admin, revoked, created.json()["id"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    http: httpx.AsyncClient, method: str, path: str, task_id: str, headers: dict[str, str]
) -> httpx.Response:
    body = BODIES.get(path)
    return await http.request(method, path.format(id=task_id), json=body, headers=headers)


def assert_bare_refusal(response: httpx.Response, status: int, code: str, people: People) -> None:
    """The status and code, and nothing of the task or of any token in the answer."""
    assert response.status_code == status, (response.request.url, response.text)
    assert response.json()["error"]["code"] == code
    text = response.text + str(response.headers)
    for secret in (people.alice_task, "secret.example.com", people.alice, people.bob):
        assert secret not in text


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "credentials",
    ["none", "empty", "basic", "wrong", "revoked", "lowercase-scheme-wrong"],
)
async def test_every_endpoint_refuses_a_missing_wrong_or_revoked_token_with_401(
    client: httpx.AsyncClient,
    people: People,
    sessionmaker: async_sessionmaker[AsyncSession],
    method: str,
    path: str,
    credentials: str,
) -> None:
    headers = {
        "none": {},
        "empty": {"Authorization": "Bearer "},
        "basic": {"Authorization": "Basic YWxpY2U6YWxpY2U="},
        "wrong": bearer(people.alice + "x"),
        "revoked": bearer(people.revoked),
        "lowercase-scheme-wrong": {"Authorization": f"bearer {people.alice[:-1]}"},
    }[credentials]

    with capture_logs() as logs:
        response = await call(client, method, path, people.alice_task, headers)

    assert_bare_refusal(response, 401, "not_authenticated", people)
    assert response.headers["www-authenticate"] == "Bearer"
    assert people.revoked not in str(logs)
    assert await count_rows(sessionmaker) == (1, 1)


@pytest.mark.parametrize(("method", "path"), TASK_ENDPOINTS)
async def test_another_users_task_looks_exactly_like_a_missing_one(
    client: httpx.AsyncClient,
    people: People,
    sessionmaker: async_sessionmaker[AsyncSession],
    method: str,
    path: str,
) -> None:
    async with sessionmaker() as session, session.begin():
        task = await session.get(Task, uuid.UUID(people.alice_task))
        assert task is not None
        task.status = "failed"  # retryable, so a refusal can only come from ownership

    theirs = await call(client, method, path, people.alice_task, bearer(people.bob))
    missing = await call(client, method, path, str(uuid.uuid4()), bearer(people.bob))
    as_admin = await call(client, method, path, people.alice_task, bearer(people.admin))

    assert_bare_refusal(theirs, 404, "not_found", people)
    assert theirs.json() == missing.json()
    assert {k: v for k, v in theirs.headers.items() if k != "x-request-id"} == {
        k: v for k, v in missing.headers.items() if k != "x-request-id"
    }
    # Admins operate through scanctl and /ops; the task API is per user for them too.
    assert as_admin.json() == missing.json()
    async with sessionmaker() as session:
        unchanged = await session.get(Task, uuid.UUID(people.alice_task))
    assert unchanged is not None
    assert (unchanged.status, unchanged.attempts) == ("failed", 0)


async def test_another_users_batch_looks_exactly_like_a_missing_one(
    client: httpx.AsyncClient, people: People
) -> None:
    created = await client.post(
        "/api/v1/batches",
        json={"tasks": [{"target_domain": "secret.example.com"}]},
        headers=bearer(people.alice),
    )
    assert created.status_code == 201
    batch_id = created.json()["id"]

    theirs = await client.get(f"/api/v1/batches/{batch_id}", headers=bearer(people.bob))
    missing = await client.get(f"/api/v1/batches/{uuid.uuid4()}", headers=bearer(people.bob))
    as_admin = await client.get(f"/api/v1/batches/{batch_id}", headers=bearer(people.admin))
    own = await client.get(f"/api/v1/batches/{batch_id}", headers=bearer(people.alice))

    assert_bare_refusal(theirs, 404, "not_found", people)
    assert theirs.json() == missing.json() == as_admin.json()
    assert batch_id not in theirs.text
    assert own.status_code == 200


async def test_another_users_tasks_never_show_in_a_listing(
    client: httpx.AsyncClient, people: People
) -> None:
    for status in (None, "pending"):
        params = {"status": status} if status else {}
        page = await client.get("/api/v1/tasks", params=params, headers=bearer(people.bob))
        assert page.status_code == 200
        assert page.json() == {"items": [], "next_cursor": None}
    own = await client.get("/api/v1/tasks", headers=bearer(people.alice))
    assert [item["id"] for item in own.json()["items"]] == [people.alice_task]


async def test_admin_endpoints_refuse_other_users_with_403_and_answer_admins(
    client: httpx.AsyncClient, people: People
) -> None:
    for token in (people.alice, people.bob):
        response = await client.get("/api/v1/ops/health", headers=bearer(token))
        assert_bare_refusal(response, 403, "forbidden", people)
    answered = await client.get("/api/v1/ops/health", headers=bearer(people.admin))
    assert answered.status_code in (200, 503)
    assert "tasks" in answered.text
    assert people.admin not in answered.text
