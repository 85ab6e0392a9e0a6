"""Fire due schedules: every relay, `FOR UPDATE SKIP LOCKED`, one transaction per claim.

In one transaction a relay claims up to `schedule_fire_batch_size` due schedules, writes each
run's batch, its tasks and their outbox rows (`batches.insert_batch`, the batch lane), the run
records, and every claimed schedule's next fire time, then commits. Two relays never fire the
same tick: a locked row is skipped and a committed one is no longer due. A relay killed
mid-fire leaves nothing behind: its transaction rolls back and the tick is still due for the
next claim (and `uq_schedule_runs_tick` refuses a tick recorded twice).

Every relay fires, not only the leader: a tick then waits for no election after a leader dies
(up to three leader-check intervals), and a minute with a thousand due schedules is shared
between the relays.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.claim_rounds import claim_until_short
from shared import create_rate, metrics, schedule_times
from shared.db import batches, schedules
from shared.logging import get_logger
from shared.messages import scan_entry
from shared.settings import Settings

log = get_logger(__name__)

SKIPPED_MISSED = "missed"
SKIPPED_RATE_LIMITED = "rate_limited"
SKIPPED_INVALID = "invalid_schedule"
SKIPPED_REVOKED = "client_revoked"


@dataclass
class FireCounts:
    fired: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    lateness_s: list[float] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def run_fingerprint(schedule_id: uuid.UUID, tick: datetime) -> str:
    """The run's batch request hash: the schedule and the tick it fires."""
    meaning = json.dumps({"schedule_id": str(schedule_id), "tick": tick.isoformat()})
    return hashlib.sha256(meaning.encode()).hexdigest()


def new_batch(due: schedules.DueSchedule, tick: datetime, settings: Settings) -> batches.NewBatch:
    """The run's batch, as `POST /api/v1/batches` would write it; with a changes-only callback
    the batch has none of its own (the run report sends one when something changed)."""
    return batches.NewBatch(
        id=uuid.uuid4(),
        user_id=due.user_id,
        config=due.config,
        max_attempts=settings.task_max_attempts,
        request_hash=run_fingerprint(due.id, tick),
        idempotency_key=None,
        domains=due.domains,
        entries=[scan_entry(uuid.uuid4(), settings.queue_name) for _ in due.domains],
        callback_url=None if due.callback_changes_only else due.callback_url,
    )


# eq=False: a live part, not a value: equal only to itself, and hashable.
@dataclass(eq=False)
class Firing:
    """The relay's schedule job: `run_once` fires what is due, claim after claim."""

    sessionmaker: async_sessionmaker[AsyncSession]
    redis: aioredis.Redis
    settings: Settings
    stop: asyncio.Event
    # The runs' outbox rows are committed: this relay publishes them at once.
    wake_relay: Callable[[], None] | None = None

    async def run_once(self) -> None:
        """Claim until a claim comes back short; never raises for a database error."""
        full = self.settings.schedule_fire_batch_size
        await claim_until_short(self._fire_once, full, self.stop, log, "schedule_firing_failed")

    async def _fire_once(self) -> int:
        """One committed claim, counted, logged and announced; the schedules it handled."""
        counts = await fire_due(self.sessionmaker, self.redis, self.settings)
        _count(counts)
        if counts.fired and self.wake_relay is not None:
            self.wake_relay()
        if counts.fired or counts.skipped:
            log.info("schedules_fired", fired=counts.fired, skipped=counts.skipped)
        return counts.fired + sum(counts.skipped.values())


def _count(counts: FireCounts) -> None:
    """Metrics of one committed claim."""
    metrics.SCHEDULE_TICKS.labels(outcome="fired").inc(counts.fired)
    for reason, number in counts.skipped.items():
        metrics.SCHEDULE_TICKS.labels(outcome=reason).inc(number)
    for late_s in counts.lateness_s:
        metrics.SCHEDULE_LATENESS.observe(late_s)


async def _plan_one(
    session: AsyncSession,
    redis: aioredis.Redis,
    settings: Settings,
    due: schedules.DueSchedule,
    counts: FireCounts,
) -> tuple[schedules.NewRun | None, schedules.Advance]:
    if due.revoked:
        # A revoked client's schedules stop, as its token does; left due, they would fill
        # every claim ahead of the others.
        log.info("schedule_stopped", schedule_id=str(due.id), reason=SKIPPED_REVOKED)
        counts.skip(SKIPPED_REVOKED)
        return None, schedules.Advance(due.id, None, None)
    try:
        if not due.domains:
            raise schedule_times.InvalidSpec("domains", "a schedule needs a domain")
        spec = schedule_times.Spec(due.cron, due.timezone, due.interval_s, due.anchor_at)
        trigger = spec.trigger()
    except schedule_times.InvalidSpec as exc:
        # Validated at create; a row written by hand must not stop the others firing. It
        # stops (no next fire time) until fixed, rather than failing every claim.
        log.error("schedule_invalid", schedule_id=str(due.id), field=exc.field)
        counts.skip(SKIPPED_INVALID)
        return None, schedules.Advance(due.id, None, None)
    policy = schedule_times.MissedPolicy(due.missed)
    plan = schedule_times.plan(
        trigger, due.next_fire_at, due.now, policy, settings.schedule_misfire_grace_s
    )
    advance = schedules.Advance(due.id, plan.next_fire_at, plan.tick)
    if plan.tick is None:
        counts.skip(SKIPPED_MISSED)
        run = schedules.NewRun(due.id, due.user_id, plan.due, plan.missed, None, SKIPPED_MISSED)
        return run, schedules.Advance(due.id, plan.next_fire_at, None)
    wait_s = await create_rate.charge(redis, settings, due.user_id, cost=len(due.domains))
    if wait_s:
        counts.skip(SKIPPED_RATE_LIMITED)
        reason = f"{SKIPPED_RATE_LIMITED}: the client's create budget is spent for {wait_s} s"
        return schedules.NewRun(due.id, due.user_id, plan.tick, plan.missed, None, reason), advance
    new = new_batch(due, plan.tick, settings)
    await batches.insert_batch(session, new)
    counts.fired += 1
    counts.lateness_s.append((due.now - plan.tick).total_seconds())
    return schedules.NewRun(due.id, due.user_id, plan.tick, plan.missed, new.id, None), advance


async def fire_due(
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: aioredis.Redis,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> FireCounts:
    """One claim of due schedules, fired in one transaction; `now` fixes the clock (tests)."""
    counts = FireCounts()
    async with sessionmaker() as session, session.begin():
        claimed = await schedules.claim_due(session, settings.schedule_fire_batch_size, now)
        runs: list[schedules.NewRun] = []
        moves: list[schedules.Advance] = []
        for due in claimed:
            run, move = await _plan_one(session, redis, settings, due, counts)
            moves.append(move)
            if run is not None:
                runs.append(run)
        await schedules.insert_runs(session, runs)
        await schedules.advance(session, moves)
    return counts
