"""The create rate limit counts tasks, not requests: a batch costs one per (unique) domain.

The bucket: a burst of 3 tasks, then one a second (60 a minute)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import keys
from shared.settings import Settings
from tests.helpers import api_client, count_rows, make_user

BURST = 3


@pytest.fixture
async def client(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    limited = settings.model_copy(update={"rate_limit_per_minute": 60, "rate_limit_burst": BURST})
    async with api_client(limited) as http:
        yield http


@pytest.fixture
async def headers(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, str]:
    _, token = await make_user(sessionmaker, "alice")
    return {"Authorization": f"Bearer {token}"}


def batch(prefix: str, size: int) -> dict[str, object]:
    return {"tasks": [{"target_domain": f"{prefix}{n}.example.com"} for n in range(size)]}


async def single(http: httpx.AsyncClient, headers: dict[str, str], name: str) -> int:
    response = await http.post(
        "/api/v1/tasks", json={"target_domain": f"{name}.example.com"}, headers=headers
    )
    return response.status_code


async def test_a_batch_of_the_burst_uses_the_whole_bucket(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    accepted = await client.post("/api/v1/batches", json=batch("a", BURST), headers=headers)

    assert accepted.status_code == 201
    assert await single(client, headers, "next") == 429
    assert await count_rows(sessionmaker) == (BURST, BURST)


async def test_a_batch_larger_than_what_is_left_is_refused_whole_and_charges_nothing(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    assert await single(client, headers, "first") == 201
    due_before = redis_client.get(keys.create_rate(1))

    refused = await client.post("/api/v1/batches", json=batch("b", BURST), headers=headers)

    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "rate_limited"
    assert redis_client.get(keys.create_rate(1)) == due_before
    assert await count_rows(sessionmaker) == (1, 1)
    # What is left (two tasks) still goes through.
    fits = await client.post("/api/v1/batches", json=batch("c", BURST - 1), headers=headers)
    assert fits.status_code == 201


async def test_duplicates_are_charged_once(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    repeated = {"tasks": [{"target_domain": "same.example.com"}] * (BURST + 5)}

    assert (await client.post("/api/v1/batches", json=repeated, headers=headers)).status_code == 201
    assert await single(client, headers, "one") == 201
    assert await single(client, headers, "two") == 201
    assert await single(client, headers, "three") == 429


async def test_a_batch_larger_than_the_burst_needs_a_full_bucket_and_leaves_a_debt(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    big = await client.post("/api/v1/batches", json=batch("big", BURST + 5), headers=headers)
    after = await client.post(
        "/api/v1/tasks", json={"target_domain": "x.example.com"}, headers=headers
    )

    assert big.status_code == 201
    assert big.json()["task_count"] == BURST + 5
    # 8 tasks at one a second from a bucket of 3: the next task is due in 8 - 3 + 1 = 6 s.
    assert after.status_code == 429
    assert after.headers["retry-after"] == "6"
    assert await count_rows(sessionmaker) == (BURST + 5, BURST + 5)


async def test_an_idempotent_replay_is_not_charged(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    keyed = {**headers, "Idempotency-Key": "k1"}
    first = await client.post("/api/v1/batches", json=batch("k", BURST), headers=keyed)
    replay = await client.post("/api/v1/batches", json=batch("k", BURST), headers=keyed)

    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["idempotent-replayed"] == "true"
