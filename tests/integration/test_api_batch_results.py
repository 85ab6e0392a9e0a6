"""A batch's results from the client's side: pages with results, the task list by batch, the
list of one's batches, cancelling a batch and the whole export, NDJSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import uuid

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench.finished_batch import seed_finished_batch
from shared.db.models import Task, User
from tests.helpers import make_user


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def user_named(sessionmaker: async_sessionmaker[AsyncSession], name: str) -> User:
    async with sessionmaker() as session:
        return (await session.execute(select(User).where(User.name == name))).scalar_one()


async def seeded(sessionmaker: async_sessionmaker[AsyncSession], user_id: int, n: int) -> str:
    async with sessionmaker() as session, session.begin():
        return str(await seed_finished_batch(session, user_id, n))


async def submit(client: httpx.AsyncClient, token: str, *domains: str) -> dict[str, object]:
    body = {"tasks": [{"target_domain": d} for d in domains]}
    response = await client.post("/api/v1/batches", json=body, headers=auth(token))
    assert response.status_code == 201, response.text
    answer: dict[str, object] = response.json()
    return answer


async def test_a_5000_task_batch_reads_in_pages_with_results_and_exports_whole(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await user_named(sessionmaker, "alice")
    batch_id = await seeded(sessionmaker, alice.id, 5000)

    seen: list[dict[str, object]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"include": "result", "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = await client.get(f"/api/v1/batches/{batch_id}", params=params, headers=auth(token))
        assert page.status_code == 200, page.text
        seen.extend(page.json()["tasks"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5000
    assert [t["target_domain"] for t in seen[:2]] == ["site-1.example.com", "site-2.example.com"]
    assert all(t["result"]["domain"] == t["target_domain"] for t in seen)  # type: ignore[index]

    export = await client.get(f"/api/v1/batches/{batch_id}/results", headers=auth(token))
    assert export.status_code == 200
    assert export.headers["content-type"] == "application/x-ndjson"
    assert (
        export.headers["content-disposition"] == f'attachment; filename="batch-{batch_id}.ndjson"'
    )
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert [line["id"] for line in lines] == [t["id"] for t in seen]
    assert lines[4999]["result"]["https"]["status"] == 200
    assert lines[0]["status"] == "succeeded"
    assert lines[0]["finished_at"]


async def test_without_include_a_page_carries_no_results(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await user_named(sessionmaker, "alice")
    batch_id = await seeded(sessionmaker, alice.id, 3)

    page = await client.get(f"/api/v1/batches/{batch_id}", headers=auth(token))
    bad = await client.get(
        f"/api/v1/batches/{batch_id}", params={"include": "everything"}, headers=auth(token)
    )

    assert page.status_code == 200
    assert all("result" not in task for task in page.json()["tasks"])
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "include"


async def test_the_csv_export_puts_the_facts_in_columns_and_neutralises_formulas(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await user_named(sessionmaker, "alice")
    batch_id = await seeded(sessionmaker, alice.id, 2)
    # A scanned site controls its title: a spreadsheet must show it, never evaluate it.
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(Task)
            .where(Task.batch_position == 0)
            .values(
                result=Task.result.op("||")(
                    {"https": {"status": 200, "title": '=HYPERLINK("http://x","y")'}}
                )
            )
        )

    by_query = await client.get(
        f"/api/v1/batches/{batch_id}/results", params={"format": "csv"}, headers=auth(token)
    )
    by_accept = await client.get(
        f"/api/v1/batches/{batch_id}/results", headers={**auth(token), "Accept": "text/csv"}
    )

    assert by_query.status_code == 200
    assert by_query.headers["content-type"] == "text/csv; charset=utf-8"
    assert by_accept.text == by_query.text
    rows = list(csv.DictReader(io.StringIO(by_query.text)))
    assert len(rows) == 2
    assert rows[0]["title"] == '\'=HYPERLINK("http://x","y")'
    assert rows[1]["title"] == "Example Domain — Welcome"
    assert rows[1]["http_status"] == "200"
    assert rows[1]["tls_not_after"] == "2027-03-01T00:00:00+00:00"
    assert rows[1]["findings"] == "2"
    assert json.loads(rows[1]["result"])["domain"] == "site-2.example.com"


async def test_another_users_batch_cannot_be_read_exported_listed_or_cancelled(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    bob, bob_token = await make_user(sessionmaker, "bob")
    batch_id = await seeded(sessionmaker, bob.id, 3)

    answers = [
        await client.get(f"/api/v1/batches/{batch_id}/results", headers=auth(token)),
        await client.post(f"/api/v1/batches/{batch_id}/cancel", headers=auth(token)),
        await client.get(f"/api/v1/batches/{batch_id}", headers=auth(token)),
    ]
    listed = await client.get("/api/v1/batches", headers=auth(token))
    by_batch = await client.get("/api/v1/tasks", params={"batch_id": batch_id}, headers=auth(token))

    assert [a.status_code for a in answers] == [404, 404, 404]
    assert all(a.json()["error"]["field"] == "batch_id" for a in answers)
    assert listed.json() == {"items": [], "next_cursor": None}
    assert by_batch.json()["items"] == []
    mine = await client.get("/api/v1/batches", headers=auth(bob_token))
    assert [b["id"] for b in mine.json()["items"]] == [batch_id]


async def test_batches_are_listed_newest_first_in_keyset_pages_with_their_counts(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await user_named(sessionmaker, "alice")
    done = await seeded(sessionmaker, alice.id, 4)
    fresh = [(await submit(client, token, f"b{n}.example.com"))["id"] for n in range(3)]

    first = await client.get("/api/v1/batches", params={"limit": 2}, headers=auth(token))
    second = await client.get(
        "/api/v1/batches",
        params={"limit": 2, "cursor": first.json()["next_cursor"]},
        headers=auth(token),
    )

    ids = [b["id"] for b in first.json()["items"] + second.json()["items"]]
    assert ids == [*reversed(fresh), done]
    assert second.json()["next_cursor"] is None
    finished = second.json()["items"][-1]
    assert (finished["counts"], finished["done"]) == ({"succeeded": 4}, True)
    assert finished["finished_at"] is not None
    assert first.json()["items"][0]["counts"] == {"pending": 1}
    assert "tasks" not in first.json()["items"][0]


async def test_the_task_list_filters_by_batch_and_carries_results(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await user_named(sessionmaker, "alice")
    batch_id = await seeded(sessionmaker, alice.id, 3)
    await client.post(
        "/api/v1/tasks", json={"target_domain": "alone.example.com"}, headers=auth(token)
    )

    page = await client.get(
        "/api/v1/tasks", params={"batch_id": batch_id, "limit": 100}, headers=auth(token)
    )

    items = page.json()["items"]
    assert sorted(t["target_domain"] for t in items) == [f"site-{n}.example.com" for n in (1, 2, 3)]
    assert all(t["result"]["domain"] == t["target_domain"] for t in items)


async def test_cancelling_a_batch_cancels_what_has_not_ended_and_keeps_the_rest(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    batch = await submit(client, token, "a.example.com", "b.example.com", "c.example.com")
    batch_id = uuid.UUID(str(batch["id"]))
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(Task)
            .where(Task.batch_id == batch_id, Task.batch_position == 0)
            .values(status="succeeded", finished_at=Task.created_at)
        )

    cancelled = await client.post(f"/api/v1/batches/{batch_id}/cancel", headers=auth(token))
    again = await client.post(f"/api/v1/batches/{batch_id}/cancel", headers=auth(token))

    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["counts"] == {"succeeded": 1, "cancelled": 2}
    assert body["done"] is True
    assert [t["status"] for t in body["tasks"]] == ["succeeded", "cancelled", "cancelled"]
    assert again.status_code == 200
    assert again.json()["counts"] == body["counts"]
