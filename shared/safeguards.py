"""Secondary Redis safeguards: the task-created marker. They may fail without harm."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import keys
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)


def create_redis(settings: Settings) -> aioredis.Redis:
    """A client whose calls give up after `redis_timeout_s`, so Redis can never stall a request."""
    return aioredis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry_on_timeout=False,
    )


async def set_created_marker(redis: aioredis.Redis, task_id: uuid.UUID, ttl_s: int) -> bool:
    """Set `task_created:{id}`; False (logged) when Redis is unreachable."""
    try:
        await redis.set(keys.task_created_marker(task_id), "1", ex=ttl_s)
    except (RedisError, OSError) as exc:
        log.warning("safeguard_marker_failed", task_id=str(task_id), error=type(exc).__name__)
        return False
    return True


async def has_created_marker(redis: aioredis.Redis, task_id: uuid.UUID) -> bool | None:
    """True/False from Redis, or None when Redis cannot answer."""
    try:
        return bool(await redis.exists(keys.task_created_marker(task_id)))
    except (RedisError, OSError) as exc:
        log.warning("safeguard_marker_check_failed", task_id=str(task_id), error=type(exc).__name__)
        return None
