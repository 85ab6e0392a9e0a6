"""POST/GET /api/v1/batches against a real PostgreSQL and Redis: one transaction per batch,
every bad entry named by index and field, duplicates as one task, idempotency, paging."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import redis
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import keys, wakeups
from shared.db.models import Batch, OutboxMessage, Task
from shared.settings import Settings
from tests.helpers import api_client, count_rows, make_user, published


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def body(*domains: str, **config: Any) -> dict[str, Any]:
    return {"tasks": [{"target_domain": d} for d in domains], "config": config or {}}


async def test_a_batch_commits_every_task_with_its_outbox_row_in_submission_order(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    domains = [f"site{n}.example.com" for n in range(25)]
    headers = {**auth(token), "X-Request-ID": "batch-req-1"}

    response = await client.post(
        "/api/v1/batches", json=body(*domains, keywords=["login"]), headers=headers
    )

    assert response.status_code == 201, response.text
    batch = response.json()
    assert response.headers["location"] == f"/api/v1/batches/{batch['id']}"
    assert (batch["task_count"], batch["counts"], batch["done"]) == (25, {"pending": 25}, False)
    assert batch["finished_at"] is None
    assert [t["target_domain"] for t in batch["tasks"]] == domains
    async with sessionmaker() as session:
        tasks = (await session.execute(select(Task).order_by(Task.batch_position))).scalars().all()
        messages = (await session.execute(select(OutboxMessage))).scalars().all()
    assert [t.target_domain for t in tasks] == domains
    assert {str(t.batch_id) for t in tasks} == {batch["id"]}
    assert all(t.config == {"keywords": ["login"], "regexes": []} for t in tasks)
    assert sorted(m.task_id for m in messages) == sorted(t.id for t in tasks)
    assert all(m.actor == keys.SCAN_ACTOR and m.published_at is None for m in messages)
    assert {m.payload["request_id"] for m in messages} == {"batch-req-1"}
    assert {m.payload["task_id"] for m in messages} == {str(t.id) for t in tasks}


async def test_every_bad_entry_is_named_by_index_and_field_and_nothing_is_written(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    domains = [
        "ok.example.com",
        "https://x.example.com",
        "fine.example.org",
        "localhost",
        "10.0.0.1",
    ]

    response = await client.post("/api/v1/batches", json=body(*domains), headers=auth(token))

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_input", "tasks")
    assert [(e["index"], e["field"]) for e in error["errors"]] == [
        (1, "target_domain"),
        (3, "target_domain"),
        (4, "target_domain"),
    ]
    assert "scheme" in error["errors"][0]["reason"]
    assert await count_rows(sessionmaker) == (0, 0)
    async with sessionmaker() as session:
        assert (await session.execute(select(Batch))).first() is None


async def test_entries_of_the_wrong_shape_are_named_by_index_too(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    payload = {"tasks": [{"target_domain": "a.example.com"}, {"domain": "b.example.com"}, 7]}

    response = await client.post("/api/v1/batches", json=payload, headers=auth(token))

    assert response.status_code == 422, response.text
    errors = response.json()["error"]["errors"]
    assert {(e["index"], e["field"]) for e in errors} >= {
        (1, "target_domain"),
        (1, "domain"),
        (2, "tasks"),
    }
    assert await count_rows(sessionmaker) == (0, 0)


async def test_a_batch_whose_pattern_re2_cannot_run_is_a_422_naming_it(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    config = {"regexes": ["acme", r"(\w+) \1"]}

    response = await client.post(
        "/api/v1/batches",
        json=body("a.example.com", "b.example.com", **config),
        headers=auth(token),
    )

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_input", "config.regexes.1")
    assert "'(\\w+) \\1'" in error["message"]
    assert await count_rows(sessionmaker) == (0, 0)


async def test_a_batch_over_the_configured_size_is_refused_naming_tasks(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await make_user(sessionmaker, "alice")
    small = settings.model_copy(update={"batch_max_tasks": 3})
    async with api_client(small) as http:
        refused = await http.post(
            "/api/v1/batches",
            json=body(*(f"d{n}.example.com" for n in range(4))),
            headers=auth(token),
        )
        accepted = await http.post(
            "/api/v1/batches",
            json=body(*(f"d{n}.example.com" for n in range(3))),
            headers=auth(token),
        )
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "tasks"
    assert "at most 3" in refused.json()["error"]["message"]
    assert accepted.status_code == 201
    assert await count_rows(sessionmaker) == (3, 3)


async def test_duplicates_inside_a_batch_are_one_task(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    domains = ["a.example.com", "A.Example.COM.", "b.example.com", "a.example.com"]

    response = await client.post("/api/v1/batches", json=body(*domains), headers=auth(token))

    assert response.status_code == 201, response.text
    assert response.json()["task_count"] == 2
    assert [t["target_domain"] for t in response.json()["tasks"]] == [
        "a.example.com",
        "b.example.com",
    ]
    assert await count_rows(sessionmaker) == (2, 2)


async def test_an_idempotency_key_replays_the_same_batch_and_refuses_another_body(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    headers = {**auth(token), "Idempotency-Key": "nightly-2026-12-02"}
    first = await client.post(
        "/api/v1/batches", json=body("a.example.com", "b.example.com"), headers=headers
    )
    again = await client.post(
        "/api/v1/batches", json=body("a.example.com", "b.example.com"), headers=headers
    )
    other = await client.post("/api/v1/batches", json=body("a.example.com"), headers=headers)

    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 422)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert other.json()["error"]["field"] == "Idempotency-Key"
    assert await count_rows(sessionmaker) == (2, 2)


async def test_concurrent_retries_of_one_keyed_batch_create_it_once(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    headers = {**auth(token), "Idempotency-Key": "race"}
    payload = body(*(f"r{n}.example.com" for n in range(50)))

    answers = await asyncio.gather(
        *(client.post("/api/v1/batches", json=payload, headers=headers) for _ in range(5))
    )

    # One creates; each other one is either told the first is still in flight (409) or,
    # arriving after it, gets its answer again.
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {201, 409}, codes
    created = [a for a in answers if a.status_code == 201]
    assert sum("idempotent-replayed" not in a.headers for a in created) == 1
    assert len({a.json()["id"] for a in created}) == 1
    assert all(
        a.json()["error"]["code"] == "idempotency_key_in_flight"
        for a in answers
        if a.status_code == 409
    )
    assert await count_rows(sessionmaker) == (50, 50)


async def test_a_whole_batch_sends_one_hint_and_no_notify(
    client: httpx.AsyncClient, token: str, settings: Settings, redis_client: redis.Redis
) -> None:
    connection = await asyncpg.connect(settings.asyncpg_dsn)
    notified: list[str] = []
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(wakeups.OUTBOX)
    try:
        # The channel the outbox trigger notified before revision 0008.
        await connection.add_listener("scan_outbox", lambda *args: notified.append(args[2]))
        response = await client.post(
            "/api/v1/batches",
            json=body(*(f"n{n}.example.com" for n in range(200))),
            headers=auth(token),
        )
        assert response.status_code == 201
        # A round trip on the listening connection delivers whatever was sent before it.
        await connection.execute("SELECT 1")
        hints = await published(pubsub)
    finally:
        await connection.close()
        pubsub.close()
    assert hints == [(wakeups.OUTBOX, "")]
    # Nothing notifies inside the transaction: a NOTIFY would serialise every commit.
    assert notified == []


async def test_no_trigger_calls_pg_notify(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as session:
        notifying = (
            await session.execute(
                text(
                    "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                    "WHERE NOT t.tgisinternal AND p.prosrc ILIKE '%pg_notify%'"
                )
            )
        ).scalar_one()
    assert notifying == 0


async def test_get_pages_through_the_tasks_in_order_with_counts_by_status(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    domains = [f"p{n:02}.example.com" for n in range(23)]
    created = (
        await client.post("/api/v1/batches", json=body(*domains), headers=auth(token))
    ).json()
    async with sessionmaker() as session, session.begin():
        await session.execute(
            text(
                "UPDATE tasks SET status = 'succeeded', finished_at = now() "
                "WHERE batch_position < 5"
            )
        )
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = await client.get(
            f"/api/v1/batches/{created['id']}", params=params, headers=auth(token)
        )
        assert page.status_code == 200, page.text
        pages += 1
        seen += [t["target_domain"] for t in page.json()["tasks"]]
        assert page.json()["counts"] == {"pending": 18, "succeeded": 5}
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (domains, 3)


async def test_a_batch_is_done_with_a_finish_time_once_every_task_ended(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    created = (
        await client.post(
            "/api/v1/batches", json=body("a.example.com", "b.example.com"), headers=auth(token)
        )
    ).json()
    async with sessionmaker() as session, session.begin():
        await session.execute(text("UPDATE tasks SET status = 'failed', finished_at = now()"))

    batch = (await client.get(f"/api/v1/batches/{created['id']}", headers=auth(token))).json()

    assert (batch["done"], batch["counts"]) == (True, {"failed": 2})
    assert batch["finished_at"] is not None


async def test_a_bad_cursor_is_422_naming_cursor(client: httpx.AsyncClient, token: str) -> None:
    created = (
        await client.post("/api/v1/batches", json=body("a.example.com"), headers=auth(token))
    ).json()
    for cursor in ("%%%", "LTE", "bm90LWEtbnVtYmVy"):
        response = await client.get(
            f"/api/v1/batches/{created['id']}", params={"cursor": cursor}, headers=auth(token)
        )
        assert response.status_code == 422, cursor
        assert response.json()["error"]["field"] == "cursor"


async def test_another_users_batch_is_404_like_a_missing_one(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, bob = await make_user(sessionmaker, "bob")
    created = (
        await client.post("/api/v1/batches", json=body("secret.example.com"), headers=auth(token))
    ).json()

    theirs = await client.get(f"/api/v1/batches/{created['id']}", headers=auth(bob))
    missing = await client.get(f"/api/v1/batches/{uuid.uuid4()}", headers=auth(bob))

    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    assert "secret" not in theirs.text


def longest_domain(n: int) -> str:
    """A unique legal domain of the maximum 253 characters."""
    first = f"x{n:05d}".ljust(63, "a")
    return ".".join([first, "b" * 63, "c" * 63, "d" * 61])


async def test_the_largest_legal_batch_fits_the_batch_body_limit(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    domains = [longest_domain(n) for n in range(1000)]
    # The largest config allowed: 16,384 bytes as JSON at most.
    config = {"keywords": ["k" * 200] * 39, "regexes": ["r" * 200] * 40}

    response = await client.post(
        "/api/v1/batches", json=body(*domains, **config), headers=auth(token)
    )

    assert len(response.request.content) > 64 * 1024  # over the other routes' limit
    assert response.status_code == 201, response.text[:300]
    assert await count_rows(sessionmaker) == (1000, 1000)


async def test_a_body_over_the_batch_limit_is_413_and_the_task_route_keeps_its_own(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await make_user(sessionmaker, "alice")
    small = settings.model_copy(update={"batch_max_body_bytes": 4096})
    padded = b'{"target_domain": "a.example.com"' + b" " * (64 * 1024) + b"}"
    async with api_client(small) as http:
        batch = await http.post(
            "/api/v1/batches",
            json=body(*(f"d{n}.example.com" for n in range(300))),
            headers=auth(token),
        )
        task = await http.post(
            "/api/v1/tasks",
            content=padded,
            headers={**auth(token), "Content-Type": "application/json"},
        )

    assert batch.status_code == 413
    assert batch.json()["error"] == {
        "code": "payload_too_large",
        "message": "request body exceeds 4096 bytes",
        "field": "body",
    }
    assert task.status_code == 413
    assert task.json()["error"]["message"] == "request body exceeds 65536 bytes"
    assert await count_rows(sessionmaker) == (0, 0)
