"""Secondary Redis safeguards: the task-created marker and short locks. They may fail without harm.

The database's conditional updates and unique indexes are what keep tasks correct; these only
narrow races and help operators. Every call is bounded by the client's `redis_timeout_s`, and a
Redis that is down or slow makes the caller go on without the safeguard (logged and counted).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import keys, metrics, redis_clients
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)


def create_redis(settings: Settings) -> aioredis.Redis:
    """A client whose calls give up after `redis_timeout_s`, so Redis can never stall a request."""
    return redis_clients.async_client(
        settings, timeout_s=settings.redis_timeout_s, retry_on_timeout=False
    )


async def set_created_marker(redis: aioredis.Redis, task_id: uuid.UUID, ttl_s: int) -> bool:
    """Set `task_created:{id}`; False (logged, counted) when Redis is unreachable."""
    try:
        await redis.set(keys.task_created_marker(task_id), "1", ex=ttl_s)
    except (RedisError, OSError) as exc:
        metrics.SAFEGUARD_FAILURES.labels(safeguard="marker").inc()
        log.warning("safeguard_marker_failed", task_id=str(task_id), error=type(exc).__name__)
        return False
    return True


async def set_created_markers(
    redis: aioredis.Redis, task_ids: Sequence[uuid.UUID], ttl_s: int
) -> bool:
    """Set `task_created:{id}` for many tasks in one pipelined round trip; False (logged,
    counted once) when Redis is unreachable."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.set(keys.task_created_marker(task_id), "1", ex=ttl_s)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        metrics.SAFEGUARD_FAILURES.labels(safeguard="marker").inc()
        log.warning("safeguard_marker_failed", tasks=len(task_ids), error=type(exc).__name__)
        return False
    return True


async def has_created_marker(redis: aioredis.Redis, task_id: uuid.UUID) -> bool | None:
    """True/False from Redis, or None when Redis cannot answer."""
    try:
        return bool(await redis.exists(keys.task_created_marker(task_id)))
    except (RedisError, OSError) as exc:
        metrics.SAFEGUARD_FAILURES.labels(safeguard="marker_check").inc()
        log.warning("safeguard_marker_check_failed", task_id=str(task_id), error=type(exc).__name__)
        return None


@asynccontextmanager
async def optional_lock(
    redis: aioredis.Redis, name: str, settings: Settings
) -> AsyncIterator[bool]:
    """Hold the Redis lock `name` around the block if it can be had; yields whether it was.

    The block runs either way: when Redis fails (logged, counted) or another holder keeps the
    lock past `lock_wait_s` (logged), the database's own guards still decide the outcome.
    The lock expires after `lock_timeout_s` should this process die holding it.
    With `redis_safeguards` off the block runs at once, unlocked.
    """
    if not settings.redis_safeguards:
        yield False
        return
    lock = redis.lock(name, timeout=settings.lock_timeout_s, blocking_timeout=settings.lock_wait_s)
    try:
        acquired = bool(await lock.acquire())
    except (RedisError, OSError) as exc:
        metrics.SAFEGUARD_FAILURES.labels(safeguard="lock").inc()
        log.warning("safeguard_lock_failed", lock=name, error=type(exc).__name__)
        acquired = False
    else:
        if not acquired:
            log.warning("safeguard_lock_busy", lock=name, waited_s=settings.lock_wait_s)
    try:
        yield acquired
    finally:
        if acquired:
            await _release(lock, name)


async def _release(lock: aioredis.lock.Lock, name: str) -> None:
    try:
        await lock.release()
    except (RedisError, OSError) as exc:
        # Expired or unreachable: the lock times out by itself.
        metrics.SAFEGUARD_FAILURES.labels(safeguard="lock").inc()
        log.warning("safeguard_lock_release_failed", lock=name, error=type(exc).__name__)
