"""The Redis lock and marker against a real Redis, a stopped one and one that never answers."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from prometheus_client import REGISTRY
from pydantic import SecretStr

from shared import keys, safeguards
from shared.embedded import free_port
from shared.settings import Settings


def lock_failures() -> float:
    value = REGISTRY.get_sample_value("scan_outbox_safeguard_failures_total", {"safeguard": "lock"})
    return value or 0.0


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers, like a Redis that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture
async def lock_settings(settings: Settings, redis_client: redis.Redis) -> Settings:
    redis_client.flushdb()
    return settings.model_copy(update={"lock_wait_s": 0.05, "redis_timeout_s": 0.2})


def pointed_at(settings: Settings, port: int) -> Settings:
    return settings.model_copy(update={"redis_url": SecretStr(f"redis://127.0.0.1:{port}/0")})


@pytest.fixture
async def client(lock_settings: Settings) -> AsyncIterator[safeguards.aioredis.Redis]:
    redis_client = safeguards.create_redis(lock_settings)
    yield redis_client
    await redis_client.aclose()


async def test_the_lock_is_held_for_the_block_and_released_after(
    client: safeguards.aioredis.Redis, lock_settings: Settings, redis_client: redis.Redis
) -> None:
    name = keys.create_lock(7, "order-1")
    assert name == "lock:create:7:order-1"
    async with safeguards.optional_lock(client, name, lock_settings) as held:
        assert held is True
        assert 0 < redis_client.pttl(name) <= 30_000
        async with safeguards.optional_lock(client, name, lock_settings) as second:
            assert second is False
    assert redis_client.exists(name) == 0


@pytest.mark.parametrize("kind", ["stopped", "hanging"])
async def test_without_redis_the_block_runs_unlocked_and_the_failure_is_counted(
    lock_settings: Settings, black_hole: int, kind: str
) -> None:
    port = free_port() if kind == "stopped" else black_hole
    settings = pointed_at(lock_settings, port)
    broken = safeguards.create_redis(settings)
    before = lock_failures()
    ran = False
    try:
        async with safeguards.optional_lock(broken, keys.task_lock(uuid.uuid4()), settings) as held:
            ran = True
            assert held is False
        assert await safeguards.set_created_marker(broken, uuid.uuid4(), 300) is False
        assert await safeguards.has_created_marker(broken, uuid.uuid4()) is None
    finally:
        await broken.aclose()
    assert ran
    assert lock_failures() == before + 1
