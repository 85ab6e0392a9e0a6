"""The HTTP API against a real PostgreSQL and Redis."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service.app import create_app
from shared import keys
from shared.db.models import OutboxMessage, Task, User
from shared.embedded import free_port
from shared.settings import Settings
from tests.helpers import count_rows, make_user


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_create_commits_task_and_outbox_row_together_and_sets_marker(
    client: httpx.AsyncClient,
    token: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    response = await client.post(
        "/api/v1/tasks",
        json={"target_domain": "Bücher.example.COM", "config": {"keywords": ["shop"]}},
        headers=auth(token),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert body["target_domain"] == "xn--bcher-kva.example.com"
    assert response.headers["location"] == f"/api/v1/tasks/{body['id']}"
    assert response.headers["x-request-id"]
    async with sessionmaker() as session:
        task = (await session.execute(select(Task))).scalar_one()
        message = (await session.execute(select(OutboxMessage))).scalar_one()
    assert str(task.id) == body["id"]
    assert message.task_id == task.id
    assert message.actor == keys.SCAN_ACTOR
    assert message.payload["task_id"] == body["id"]
    assert message.payload["request_id"] == response.headers["x-request-id"]
    assert message.published_at is None
    ttl = redis_client.ttl(keys.task_created_marker(task.id))
    assert 0 < ttl <= 300


async def test_request_id_header_is_carried_to_the_outbox_payload(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    headers = {**auth(token), "X-Request-ID": "req-abc.123"}
    response = await client.post(
        "/api/v1/tasks", json={"target_domain": "a.example.com"}, headers=headers
    )
    assert response.headers["x-request-id"] == "req-abc.123"
    async with sessionmaker() as session:
        message = (await session.execute(select(OutboxMessage))).scalar_one()
    assert message.payload["request_id"] == "req-abc.123"


async def test_create_succeeds_when_redis_is_down(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await make_user(sessionmaker, "bob")
    broken = settings.model_copy(
        update={"redis_url": SecretStr(f"redis://127.0.0.1:{free_port()}/0")}
    )
    app = create_app(broken)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.post(
                "/api/v1/tasks", json={"target_domain": "example.com"}, headers=auth(token)
            )
    assert response.status_code == 201
    assert await count_rows(sessionmaker) == (1, 1)


async def test_get_returns_own_task_and_404_for_another_users_task(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, other_token = await make_user(sessionmaker, "mallory")
    created = await client.post(
        "/api/v1/tasks", json={"target_domain": "example.com"}, headers=auth(token)
    )
    task_id = created.json()["id"]

    mine = await client.get(f"/api/v1/tasks/{task_id}", headers=auth(token))
    assert mine.status_code == 200
    assert mine.json()["id"] == task_id

    theirs = await client.get(f"/api/v1/tasks/{task_id}", headers=auth(other_token))
    assert theirs.status_code == 404
    assert theirs.json()["error"]["code"] == "not_found"
    missing = await client.get(f"/api/v1/tasks/{uuid.uuid4()}", headers=auth(token))
    assert missing.json() == theirs.json()


async def test_list_is_newest_first_keyset_paginated_and_filtered(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    ids = []
    for index in range(5):
        response = await client.post(
            "/api/v1/tasks", json={"target_domain": f"s{index}.example.com"}, headers=auth(token)
        )
        ids.append(response.json()["id"])
    _, other_token = await make_user(sessionmaker, "eve")
    await client.post(
        "/api/v1/tasks", json={"target_domain": "eve.example.com"}, headers=auth(other_token)
    )

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/tasks", params=params, headers=auth(token))).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))

    pending = await client.get("/api/v1/tasks", params={"status": "pending"}, headers=auth(token))
    assert len(pending.json()["items"]) == 5
    done = await client.get("/api/v1/tasks", params={"status": "succeeded"}, headers=auth(token))
    assert done.json()["items"] == []
    bad = await client.get("/api/v1/tasks", params={"status": "nope"}, headers=auth(token))
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "status"
    bad_cursor = await client.get("/api/v1/tasks", params={"cursor": "!!"}, headers=auth(token))
    assert bad_cursor.status_code == 422
    assert bad_cursor.json()["error"]["field"] == "cursor"


async def test_an_idempotency_key_replays_the_original_201_and_refuses_another_body_with_422(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    headers = {**auth(token), "Idempotency-Key": "order-42"}
    first = await client.post(
        "/api/v1/tasks", json={"target_domain": "example.com"}, headers=headers
    )
    # The task moves on meanwhile; the replay still answers what the create answered.
    async with sessionmaker() as session, session.begin():
        task = await session.get(Task, uuid.UUID(first.json()["id"]))
        assert task is not None
        task.status, task.attempts = "running", 1
    again = await client.post(
        "/api/v1/tasks", json={"target_domain": "EXAMPLE.com"}, headers=headers
    )
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["location"] == first.headers["location"]
    other = await client.post("/api/v1/tasks", json={"target_domain": "other.com"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert other.json()["error"]["field"] == "Idempotency-Key"
    assert await count_rows(sessionmaker) == (1, 1)


async def test_a_repeat_while_the_first_request_is_in_flight_is_a_409_with_retry_after(
    client: httpx.AsyncClient,
    token: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    async with sessionmaker() as session:
        alice = (await session.execute(select(User).where(User.name == "alice"))).scalar_one()
    # The first request's mark, as a create still running in another API process holds it.
    redis_client.set(keys.create_lock(alice.id, "task:slow-1"), "other-process", px=5000)
    headers = {**auth(token), "Idempotency-Key": "slow-1"}

    busy = await client.post(
        "/api/v1/tasks", json={"target_domain": "example.com"}, headers=headers
    )

    assert busy.status_code == 409, busy.text
    assert busy.json()["error"]["code"] == "idempotency_key_in_flight"
    assert busy.json()["error"]["field"] == "Idempotency-Key"
    assert busy.headers["retry-after"] == "1"
    assert await count_rows(sessionmaker) == (0, 0)
    redis_client.delete(keys.create_lock(alice.id, "task:slow-1"))
    done = await client.post(
        "/api/v1/tasks", json={"target_domain": "example.com"}, headers=headers
    )
    assert done.status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"target_domain": "https://example.com/x"}, "target_domain"),
        ({"target_domain": "10.0.0.1"}, "target_domain"),
        ({"target_domain": "localhost"}, "target_domain"),
        ({"target_domain": "nas.local"}, "target_domain"),
        ({"target_domain": "x" * 10_000}, "target_domain"),
        ({}, "target_domain"),
        ({"target_domain": 42}, "target_domain"),
        ({"target_domain": "example.com", "config": {"keywords": ["k"] * 51}}, "config.keywords"),
        ({"target_domain": "example.com", "config": {"regexes": ["("]}}, "config.regexes.0"),
        # PostgreSQL cannot store NUL in jsonb: refused up front, not a 500.
        (
            {"target_domain": "example.com", "config": {"keywords": ["a\u0000b"]}},
            "config.keywords.0",
        ),
        ({"target_domain": "example.com", "config": {"regexes": ["\u0000"]}}, "config.regexes.0"),
        ({"target_domain": "example.com", "config": {"nested": {"a": {"b": {}}}}}, "config.nested"),
        ({"target_domain": "example.com", "extra": 1}, "extra"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient,
    token: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    body: dict[str, object],
    field: str,
) -> None:
    response = await client.post("/api/v1/tasks", json=body, headers=auth(token))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["field"] == field
    assert error["message"]
    assert await count_rows(sessionmaker) == (0, 0)


@pytest.mark.parametrize(
    ("regexes", "index"),
    [
        (["acme", r"\d+", r"(a)\1"], 2),
        ([r"(?=a)b"], 0),
        (["ok", r"(?<!a)b"], 1),
        ([r"x\Z"], 0),
    ],
)
async def test_a_pattern_re2_cannot_run_is_a_422_naming_it_and_writes_nothing(
    client: httpx.AsyncClient,
    token: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    regexes: list[str],
    index: int,
) -> None:
    body = {"target_domain": "example.com", "config": {"regexes": regexes}}

    response = await client.post("/api/v1/tasks", json=body, headers=auth(token))

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_input", f"config.regexes.{index}")
    assert f"'{regexes[index]}'" in error["message"]
    assert "RE2" in error["message"]
    assert await count_rows(sessionmaker) == (0, 0)


@pytest.mark.parametrize(
    ("content", "status", "field"),
    [
        (b"{not json", 422, "body"),
        (b"\xff\xfe\x00bad", 422, "body"),
        (b'{"target_domain": "' + b"a" * 70_000 + b'"}', 413, None),
    ],
)
async def test_malformed_or_oversized_bodies_are_refused_and_write_nothing(
    client: httpx.AsyncClient,
    token: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    content: bytes,
    status: int,
    field: str | None,
) -> None:
    headers = {**auth(token), "Content-Type": "application/json"}
    response = await client.post("/api/v1/tasks", content=content, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if field:
        assert error["field"].startswith(field)
    assert await count_rows(sessionmaker) == (0, 0)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer so_not-a-real-token"},
    ],
)
async def test_missing_or_wrong_token_is_401_and_writes_nothing(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    headers: dict[str, str],
) -> None:
    await make_user(sessionmaker, "alice")
    response = await client.post(
        "/api/v1/tasks", json={"target_domain": "example.com"}, headers=headers
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["field"] == "Authorization"
    assert await count_rows(sessionmaker) == (0, 0)


async def test_invalid_idempotency_key_is_refused(client: httpx.AsyncClient, token: str) -> None:
    headers = {**auth(token), "Idempotency-Key": "x" * 300}
    response = await client.post(
        "/api/v1/tasks", json={"target_domain": "example.com"}, headers=headers
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "Idempotency-Key"


async def test_probes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/livez")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "redis": "ok"}
