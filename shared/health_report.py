"""The system's health in one report, shared by `scanctl status` and `GET /api/v1/ops/health`."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import redis_clients
from shared.db import inspection, recovery
from shared.db.models import TaskStatus
from shared.settings import Settings

# A database that accepts connections but never answers must not hang a probe.
DATABASE_TIMEOUT_S = 5.0
# Client lanes a report lists, longest backlog first.
CLIENTS_SHOWN = 10


@dataclass(frozen=True)
class DatabaseFacts:
    tasks_by_status: dict[str, int]
    outbox: inspection.OutboxSummary
    orphans: recovery.OrphanCounts
    # The client lanes with the longest backlogs, and their windows' use.
    clients: list[inspection.ClientDispatch]


@dataclass(frozen=True)
class HealthReport:
    """What was seen, and why it is unhealthy (no reasons: healthy)."""

    checked_at: datetime
    database_reachable: bool
    redis_reachable: bool
    broker_reachable: bool
    facts: DatabaseFacts | None
    reasons: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        facts = self.facts
        return {
            "healthy": self.healthy,
            "reasons": self.reasons,
            "checked_at": self.checked_at.isoformat(),
            "database": {"reachable": self.database_reachable},
            "redis": {"reachable": self.redis_reachable},
            "broker": {"reachable": self.broker_reachable},
            "tasks": facts.tasks_by_status if facts else None,
            "outbox": asdict(facts.outbox) if facts else None,
            "orphans": ({**asdict(facts.orphans), "total": facts.orphans.total} if facts else None),
            "clients": [asdict(client) for client in facts.clients] if facts else None,
        }


async def _ping(redis: aioredis.Redis) -> bool:
    try:
        return bool(await redis.ping())
    except (RedisError, OSError):
        return False


async def _broker_reachable(redis_ok: bool, settings: Settings) -> bool:
    if not redis_clients.separate_broker(settings):
        return redis_ok
    client = redis_clients.async_client(settings, broker=True, timeout_s=settings.redis_timeout_s)
    try:
        return await _ping(client)
    finally:
        await redis_clients.aclose(client)


async def _database_facts(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> DatabaseFacts | str:
    """The facts, or the name of the error that kept the database from answering."""
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_S), sessionmaker() as session:
            counts = await inspection.count_tasks_by_status(session)
            outbox = await inspection.summarize_outbox(session)
            orphans = await recovery.count_orphans(session, settings.queued_stale_s)
            clients = await inspection.client_dispatch(session, CLIENTS_SHOWN)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        # The class only: a driver's message may quote the connection string.
        return type(exc).__name__
    tasks_by_status = {status.value: counts.get(status.value, 0) for status in TaskStatus}
    return DatabaseFacts(tasks_by_status, outbox, orphans, clients)


def _reasons(facts: DatabaseFacts, settings: Settings) -> list[str]:
    reasons = []
    age_s = facts.outbox.oldest_unpublished_age_s
    if age_s is not None and age_s > settings.health_max_outbox_age_s:
        reasons.append(
            f"the oldest unpublished outbox row is {age_s:.0f}s old "
            f"(limit {settings.health_max_outbox_age_s:g}s); is a relay running?"
        )
    if facts.outbox.dead > settings.health_max_dead_rows:
        reasons.append(
            f"dead outbox rows: {facts.outbox.dead} (limit {settings.health_max_dead_rows}); "
            "inspect them with `scanctl outbox list --state dead`"
        )
    if facts.orphans.expired_leases:
        reasons.append(
            f"running tasks with an expired lease: {facts.orphans.expired_leases}; "
            "`scanctl cleanup-orphaned` re-dispatches them"
        )
    if facts.orphans.unlocated:
        reasons.append(
            f"tasks queued longer than {settings.queued_stale_s:g}s with no known broker message: "
            f"{facts.orphans.unlocated}; `scanctl cleanup-orphaned` re-dispatches them"
        )
    return reasons


async def gather_health(
    sessionmaker: async_sessionmaker[AsyncSession], redis: aioredis.Redis, settings: Settings
) -> HealthReport:
    """Reachability of PostgreSQL and Redis plus backlog and orphan facts; never raises for them."""
    redis_ok = await _ping(redis)
    broker_ok = await _broker_reachable(redis_ok, settings)
    facts = await _database_facts(sessionmaker, settings)
    reasons = []
    if isinstance(facts, str):
        reasons.append(f"the database is unreachable ({facts})")
    if not redis_ok:
        reasons.append("Redis is unreachable")
    if not broker_ok and redis_clients.separate_broker(settings):
        reasons.append("the broker's Redis is unreachable")
    if isinstance(facts, DatabaseFacts):
        reasons.extend(_reasons(facts, settings))
    return HealthReport(
        checked_at=datetime.now(UTC),
        database_reachable=isinstance(facts, DatabaseFacts),
        redis_reachable=redis_ok,
        broker_reachable=broker_ok,
        facts=facts if isinstance(facts, DatabaseFacts) else None,
        reasons=reasons,
    )
