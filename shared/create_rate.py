"""The per-client create budget in Redis (GCRA): one bucket per user, charged by the API's
creates and by the relay when it fires a schedule, so both draw on the same budget.

A client may create `rate_limit_burst` tasks at once, then one every 60/`rate_limit_per_minute`
seconds. The bucket counts tasks: a batch of n domains costs n. A batch larger than the burst
goes through only when the bucket is full, and leaves the client in debt for the difference,
so the sustained rate holds whatever the batch size. One key per user holds the time its next
create is due, read against Redis's own clock so every process shares one bucket.
Every answer of a limited route carries the IETF RateLimit fields: `RateLimit-Policy` (the
burst `q` and the seconds `w` an empty bucket takes to fill) and `RateLimit` (tasks `r` that
may be created now, seconds `t` until the bucket is full again); a 429 also `Retry-After`.
Like the other safeguards it fails open: with Redis down or slow the create goes on (logged,
counted as `safeguard="rate_limit"`), since refusing every create would be worse than none.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from shared import keys, metrics
from shared.errors import RateLimited
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# KEYS[1]: the bucket; ARGV: the interval between creates (µs), the burst and the cost (0: only
# look). Returns {allowed, ms to wait, tasks left, ms until full}. TIME before a write is fine:
# Redis replicates a script's effects, not the script.
_GCRA_SCRIPT = """
local interval_us = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local due = tonumber(redis.call('GET', KEYS[1])) or now
if due < now then due = now end
local capacity_us = burst * interval_us
local wait_us = due + math.min(cost, burst) * interval_us - capacity_us - now
if wait_us > 0 then
    return {0, math.ceil(wait_us / 1000), math.floor((now + capacity_us - due) / interval_us),
            math.ceil((due - now) / 1000)}
end
local next_due = due + cost * interval_us
if cost > 0 then
    redis.call('SET', KEYS[1], string.format('%d', next_due), 'PX',
               math.ceil((next_due - now) / 1000))
end
return {1, 0, math.floor((now + capacity_us - next_due) / interval_us),
        math.ceil((next_due - now) / 1000)}
"""
MICROSECONDS_PER_MINUTE = 60_000_000
POLICY_NAME = "creates"
# One registered script per client, not one per request (registering hashes the script).
_scripts: weakref.WeakKeyDictionary[aioredis.Redis, AsyncScript] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Quota:
    """A token's bucket as the IETF RateLimit fields describe it."""

    burst: int
    fill_s: int  # an empty bucket is full again after this long
    remaining: int
    reset_s: int  # this bucket is full again after this long

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Policy": f'"{POLICY_NAME}";q={self.burst};w={self.fill_s}',
            "RateLimit": f'"{POLICY_NAME}";r={self.remaining};t={self.reset_s}',
        }


def _gcra_script(redis: aioredis.Redis) -> AsyncScript:
    script = _scripts.get(redis)
    if script is None:
        script = _scripts[redis] = redis.register_script(_GCRA_SCRIPT)
    return script


async def take(
    redis: aioredis.Redis, settings: Settings, user_id: int, *, cost: int
) -> Quota | None:
    """Charge `cost` tasks to the user's bucket (0: only look) and return what is left, or
    raise RateLimited (nothing charged). None when there is no limit or Redis cannot say."""
    per_minute = settings.rate_limit_per_minute
    if per_minute == 0 or not settings.redis_safeguards:
        return None
    interval_us = MICROSECONDS_PER_MINUTE // per_minute
    burst = settings.rate_limit_burst
    try:
        allowed, wait_ms, remaining, full_ms = await _gcra_script(redis)(
            keys=[keys.create_rate(user_id)], args=[interval_us, burst, cost]
        )
    except (RedisError, OSError) as exc:
        metrics.SAFEGUARD_FAILURES.labels(safeguard="rate_limit").inc()
        log.warning("safeguard_rate_limit_failed", error=type(exc).__name__)
        return None
    quota = Quota(
        burst=burst,
        fill_s=math.ceil(burst * interval_us / 1_000_000),
        remaining=max(0, int(remaining)),
        reset_s=max(0, math.ceil(int(full_ms) / 1000)),
    )
    if allowed:
        return quota
    retry_after_s = max(1, math.ceil(int(wait_ms) / 1000))
    log.info("create_rate_limited", user_id=user_id, cost=cost, retry_after_s=retry_after_s)
    raise RateLimited(
        f"too many creates: at most {per_minute} tasks a minute, bursts of {burst}",
        retry_after_s=retry_after_s,
        headers=quota.headers(),
    )


def headers(quota: Quota | None) -> dict[str, str]:
    """The RateLimit fields for a response, none when no limit applied."""
    return quota.headers() if quota is not None else {}


async def charge(redis: aioredis.Redis, settings: Settings, user_id: int, *, cost: int) -> int:
    """Charge `cost` tasks to the user's bucket: 0 when charged (or no limit applies, or Redis
    failed: fail open), else the seconds to wait before the charge would pass (nothing
    charged)."""
    try:
        await take(redis, settings, user_id, cost=cost)
    except RateLimited as refused:
        return refused.retry_after_s or 1
    return 0
