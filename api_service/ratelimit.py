"""Per-token rate limit on creates: the GCRA bucket of `shared.create_rate`, one round trip per
request. A batch of n domains costs n; a schedule's runs are charged to the same bucket when
they fire."""

from __future__ import annotations

import redis.asyncio as aioredis

from api_service.deps import CurrentUser, RedisDep, SettingsDep
from shared import create_rate
from shared.errors import RateLimited
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)


async def limit_creates(user: CurrentUser, redis: RedisDep, settings: SettingsDep) -> None:
    """Let one create through, or raise RateLimited saying when the token may try again."""
    await take(redis, settings, user.id, cost=1)


async def take(redis: aioredis.Redis, settings: Settings, user_id: int, *, cost: int) -> None:
    """Charge `cost` tasks to the user's bucket, or raise RateLimited (nothing charged)."""
    retry_after_s = await create_rate.charge(redis, settings, user_id, cost=cost)
    if not retry_after_s:
        return
    per_minute = settings.rate_limit_per_minute
    log.info("create_rate_limited", user_id=user_id, cost=cost, retry_after_s=retry_after_s)
    raise RateLimited(
        f"too many creates: at most {per_minute} tasks a minute, bursts of "
        f"{settings.rate_limit_burst}",
        retry_after_s=retry_after_s,
    )
