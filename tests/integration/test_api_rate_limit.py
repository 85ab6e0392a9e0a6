"""The per-token create rate limit: a burst, then 429 with Retry-After; per token; and open,
with a warning and a count, when Redis cannot answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from shared import keys
from shared.embedded import free_port
from shared.settings import Settings
from tests.helpers import api_client, count_rows, make_user

BURST = 3


@pytest.fixture
async def client(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    # One create a second sustained: nothing refills within a test's few milliseconds.
    limited = settings.model_copy(update={"rate_limit_per_minute": 60, "rate_limit_burst": BURST})
    async with api_client(limited) as http:
        yield http


async def token_of(sessionmaker: async_sessionmaker[AsyncSession], name: str) -> dict[str, str]:
    _, token = await make_user(sessionmaker, name)
    return {"Authorization": f"Bearer {token}"}


async def create(http: httpx.AsyncClient, headers: dict[str, str], n: int) -> httpx.Response:
    return await http.post(
        "/api/v1/tasks", json={"target_domain": f"r{n}.example.com"}, headers=headers
    )


def failures() -> float:
    labels = {"safeguard": "rate_limit"}
    return REGISTRY.get_sample_value("scan_outbox_safeguard_failures_total", labels) or 0.0


async def test_a_burst_goes_through_then_429_with_retry_after_and_nothing_written(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    headers = await token_of(sessionmaker, "alice")

    statuses = [(await create(client, headers, n)).status_code for n in range(BURST)]
    refused = await create(client, headers, BURST)

    assert statuses == [201] * BURST
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    error: dict[str, Any] = refused.json()["error"]
    assert (error["code"], error["retry_after_s"]) == ("rate_limited", 1)
    assert "60" in error["message"]
    assert await count_rows(sessionmaker) == (BURST, BURST)
    # The bucket expires by itself once it would be full again.
    ttl_ms = redis_client.pttl(keys.create_rate(1))
    assert 0 < ttl_ms <= (BURST + 1) * 1000


async def test_every_create_answer_carries_the_ietf_ratelimit_fields(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    headers = await token_of(sessionmaker, "alice")

    answers = [await create(client, headers, n) for n in range(BURST + 1)]

    # A bucket of 3 refilled at one a second: full again 3 s after it was empty.
    assert {a.headers["ratelimit-policy"] for a in answers} == {'"creates";q=3;w=3'}
    left = [a.headers["ratelimit"] for a in answers]
    assert left[:BURST] == ['"creates";r=2;t=1', '"creates";r=1;t=2', '"creates";r=0;t=3']
    assert left[BURST] == '"creates";r=0;t=3'
    assert answers[BURST].status_code == 429


async def test_a_replayed_create_is_not_charged(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    headers = {**(await token_of(sessionmaker, "alice")), "Idempotency-Key": "once"}
    body = {"target_domain": "once.example.com"}

    answers = [await client.post("/api/v1/tasks", json=body, headers=headers) for _ in range(5)]

    assert [a.status_code for a in answers] == [201] * 5
    assert [a.headers["ratelimit"] for a in answers] == ['"creates";r=2;t=1'] * 5
    assert await count_rows(sessionmaker) == (1, 1)


async def test_each_token_has_its_own_bucket(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = await token_of(sessionmaker, "alice")
    bob = await token_of(sessionmaker, "bob")
    for n in range(BURST):
        assert (await create(client, alice, n)).status_code == 201
    assert (await create(client, alice, BURST)).status_code == 429

    assert (await create(client, bob, 100)).status_code == 201


async def test_refused_creates_do_not_use_up_the_bucket_further(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    headers = await token_of(sessionmaker, "alice")
    for n in range(BURST):
        await create(client, headers, n)
    due_before = redis_client.get(keys.create_rate(1))
    for n in range(5):
        assert (await create(client, headers, 10 + n)).status_code == 429
    # Refusals leave the bucket alone: a client hammering 429s waits no longer for it.
    assert redis_client.get(keys.create_rate(1)) == due_before
    redis_client.delete(keys.create_rate(1))
    assert (await create(client, headers, 99)).status_code == 201


async def test_reads_are_not_limited(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    headers = await token_of(sessionmaker, "alice")
    for _ in range(BURST * 3):
        assert (await client.get("/api/v1/tasks", headers=headers)).status_code == 200


async def test_with_redis_down_creates_go_through_with_a_warning_and_a_count(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    down = settings.model_copy(
        update={
            "redis_url": SecretStr(f"redis://127.0.0.1:{free_port()}/0"),
            "rate_limit_per_minute": 60,
            "rate_limit_burst": 1,
        }
    )
    headers = await token_of(sessionmaker, "alice")
    before = failures()
    async with api_client(down) as http:
        with capture_logs() as logs:
            statuses = [(await create(http, headers, n)).status_code for n in range(3)]
    assert statuses == [201] * 3
    assert failures() == before + 3
    warnings = [e for e in logs if e["event"] == "safeguard_rate_limit_failed"]
    assert [entry["log_level"] for entry in warnings] == ["warning"] * 3


async def test_a_limit_of_zero_turns_it_off(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    off = settings.model_copy(update={"rate_limit_per_minute": 0, "rate_limit_burst": 1})
    headers = await token_of(sessionmaker, "alice")
    async with api_client(off) as http:
        statuses = [(await create(http, headers, n)).status_code for n in range(3)]
    assert statuses == [201] * 3
    assert redis_client.exists(keys.create_rate(1)) == 0


async def test_one_interval_later_exactly_one_more_create_goes_through(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    headers = await token_of(sessionmaker, "alice")
    for n in range(BURST):
        await create(client, headers, n)
    assert (await create(client, headers, BURST)).status_code == 429
    # As if one interval (a second, at 60 a minute) had passed: the bucket's due time moves back.
    redis_client.decrby(keys.create_rate(1), 1_000_000)

    assert (await create(client, headers, 10)).status_code == 201
    assert (await create(client, headers, 11)).status_code == 429
