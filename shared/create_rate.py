"""The per-client create budget in Redis (GCRA) as the relay charges it when it fires a
schedule: the same key and algorithm as the API's creates (`api_service/ratelimit.py`), so a
schedule's runs and the client's own creates draw on one bucket.

A client may create `rate_limit_burst` tasks at once, then one every 60/`rate_limit_per_minute`
seconds. The bucket counts tasks: a batch of n domains costs n. A batch larger than the burst
goes through only when the bucket is full, and leaves the client in debt for the difference,
so the sustained rate holds whatever the batch size. One key per user holds the time its next
create is due, read against Redis's own clock so every process shares one bucket. Like the other
safeguards it fails open: with Redis down or slow the create goes on (logged, counted as
`safeguard="rate_limit"`), since refusing every create would be worse than none.
"""

from __future__ import annotations

import math
import weakref

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from shared import keys, metrics
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# KEYS[1]: the bucket; ARGV: the interval between creates (µs), the burst and the cost.
# Returns {1, 0} when allowed, {0, ms to wait} when not. TIME before a write is fine:
# Redis replicates a script's effects, not the script.
_GCRA_SCRIPT = """
local interval_us = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local due = tonumber(redis.call('GET', KEYS[1])) or now
if due < now then due = now end
local wait_us = due + math.min(cost, burst) * interval_us - burst * interval_us - now
if wait_us > 0 then
    return {0, math.ceil(wait_us / 1000)}
end
local next_due = due + cost * interval_us
local ttl_ms = math.ceil((next_due - now) / 1000)
redis.call('SET', KEYS[1], string.format('%d', next_due), 'PX', ttl_ms)
return {1, 0}
"""
MICROSECONDS_PER_MINUTE = 60_000_000
# One registered script per client, not one per call (registering hashes the script).
_scripts: weakref.WeakKeyDictionary[aioredis.Redis, AsyncScript] = weakref.WeakKeyDictionary()


def _gcra_script(redis: aioredis.Redis) -> AsyncScript:
    script = _scripts.get(redis)
    if script is None:
        script = _scripts[redis] = redis.register_script(_GCRA_SCRIPT)
    return script


async def charge(redis: aioredis.Redis, settings: Settings, user_id: int, *, cost: int) -> int:
    """Charge `cost` tasks to the user's bucket: 0 when charged (or no limit applies, or Redis
    failed: fail open), else the seconds to wait before the charge would pass (nothing
    charged)."""
    per_minute = settings.rate_limit_per_minute
    if per_minute == 0 or not settings.redis_safeguards:
        return 0
    interval_us = MICROSECONDS_PER_MINUTE // per_minute
    try:
        allowed, wait_ms = await _gcra_script(redis)(
            keys=[keys.create_rate(user_id)],
            args=[interval_us, settings.rate_limit_burst, cost],
        )
    except (RedisError, OSError) as exc:
        metrics.SAFEGUARD_FAILURES.labels(safeguard="rate_limit").inc()
        log.warning("safeguard_rate_limit_failed", error=type(exc).__name__)
        return 0
    if allowed:
        return 0
    return max(1, math.ceil(int(wait_ms) / 1000))
