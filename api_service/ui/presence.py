"""Which workers are alive, from Dramatiq's broker heartbeats.

Every command a Dramatiq Redis broker sends stamps its broker id in one ZSET.
An idle worker still fetches at least once a second, so a worker missing for
the broker's heartbeat timeout is gone. Relays stamp it too, while publishing:
workers name their broker id (`shared.keys.worker_broker_id`) to tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from dramatiq.brokers.redis import DEFAULT_HEARTBEAT_TIMEOUT
from redis.exceptions import RedisError

from shared import keys

HEARTBEAT_TIMEOUT_MS: int = DEFAULT_HEARTBEAT_TIMEOUT


@dataclass(frozen=True)
class WorkerSeen:
    host: str
    pid: str
    broker_id: str
    seen_s_ago: float


@dataclass(frozen=True)
class BrokerPresence:
    """None of the lists when the broker's Redis did not answer."""

    reachable: bool
    workers: list[WorkerSeen]
    other_clients: int


def parse_worker_id(broker_id: str) -> tuple[str, str] | None:
    """(host, pid) of a worker's broker id; None for any other broker client."""
    prefix, sep, rest = broker_id.partition(":")
    if prefix != keys.WORKER_BROKER_ID_PREFIX or not sep:
        return None
    host, _, _nonce = rest.rpartition(":")
    host, _, pid = host.rpartition(":")
    return (host, pid) if host and pid else None


async def broker_presence(client: aioredis.Redis, now_ms: int) -> BrokerPresence:
    """Broker clients heard from within the heartbeat timeout, workers first by host."""
    try:
        recent = await client.zrangebyscore(
            keys.BROKER_HEARTBEATS_KEY, now_ms - HEARTBEAT_TIMEOUT_MS, "+inf", withscores=True
        )
    except (RedisError, OSError):
        return BrokerPresence(reachable=False, workers=[], other_clients=0)
    workers, others = [], 0
    for member, score in cast(list[tuple[bytes | str, float]], recent):
        broker_id = member.decode(errors="replace") if isinstance(member, bytes) else str(member)
        parsed = parse_worker_id(broker_id)
        if parsed is None:
            others += 1
            continue
        seen_s_ago = max(0.0, (now_ms - score) / 1000)
        workers.append(WorkerSeen(parsed[0], parsed[1], broker_id, seen_s_ago))
    workers.sort(key=lambda w: (w.host, w.pid))
    return BrokerPresence(reachable=True, workers=workers, other_clients=others)
