"""When a schedule fires: APScheduler 3.x triggers compute the ticks, PostgreSQL keeps the state.

A schedule is a cron expression in a time zone, or an interval anchored at the schedule's
creation (ticks at anchor + k * interval, so a late firing never shifts the next ones). Only
the next fire time is stored; the trigger is rebuilt from the schedule's row each time.
Daylight saving is what APScheduler's CronTrigger makes of it (pinned by unit tests): a wall
time that does not exist fires once, at that wall time under the old offset (an hour later in
the new time); a wall time that occurs twice fires at both.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

# Missed ticks are counted up to this many (a 1 s schedule down for a day has 86,400).
MAX_COUNTED_TICKS = 1000
_AFTER = timedelta(microseconds=1)


class MissedPolicy(enum.StrEnum):
    """What a schedule does with ticks that passed while nothing could fire them."""

    RUN_ONCE = "run_once"  # one run now for all of them
    SKIP = "skip"  # no run: wait for the next tick


class InvalidSpec(ValueError):
    """The cron expression, time zone or interval cannot make a trigger; `field` says which."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Spec:
    """A schedule's timing as stored: `cron` + `timezone`, or `interval_s` + `anchor`."""

    cron: str | None
    timezone: str
    interval_s: int | None
    anchor: datetime

    def trigger(self) -> BaseTrigger:
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidSpec("timezone", "is not an IANA time zone name") from exc
        if self.interval_s is not None:
            return IntervalTrigger(seconds=self.interval_s, start_date=self.anchor, timezone=zone)
        if self.cron is None:
            raise InvalidSpec("cron", "a schedule needs a cron expression or an interval")
        try:
            return CronTrigger.from_crontab(self.cron, timezone=zone)
        except ValueError as exc:
            raise InvalidSpec("cron", f"is not a cron expression: {exc}") from exc


def first_after(trigger: BaseTrigger, now: datetime) -> datetime | None:
    """The first tick strictly after `now` (None: the trigger never fires again)."""
    fire: datetime | None = trigger.get_next_fire_time(None, now + _AFTER)
    return fire


def following(trigger: BaseTrigger, tick: datetime) -> datetime | None:
    """The tick after `tick`."""
    fire: datetime | None = trigger.get_next_fire_time(tick, tick)
    return fire


def shortest_gap_s(trigger: BaseTrigger, start: datetime, ticks: int = 10) -> float | None:
    """The shortest time between two of the next `ticks` ticks from `start` (the minimum
    interval check of a cron expression); None if it fires fewer than twice."""
    gaps: list[float] = []
    tick = first_after(trigger, start)
    while tick is not None and len(gaps) < ticks:
        after = following(trigger, tick)
        if after is None:
            break
        gaps.append((after - tick).total_seconds())
        tick = after
    return min(gaps) if gaps else None


@dataclass(frozen=True)
class Firing:
    """What one claim of a due schedule does: fire `tick` (None: fire nothing), having merged
    or skipped `missed` other ticks, and set the next fire time to `next_fire_at`."""

    tick: datetime | None
    due: datetime
    missed: int
    next_fire_at: datetime | None


def plan(
    trigger: BaseTrigger,
    due: datetime,
    now: datetime,
    policy: MissedPolicy,
    grace_s: float,
) -> Firing:
    """Decide one claim of a schedule whose stored next fire time `due` is at or before `now`.

    The ticks in [due, now] are the due ones. On time is exactly one due tick, at most
    `grace_s` late: it fires. Otherwise ticks were missed: RUN_ONCE fires once, for the
    latest of them; SKIP fires none. Never one run per missed tick.
    """
    latest, count = due, 1
    tick = following(trigger, due)
    while tick is not None and tick <= now and count < MAX_COUNTED_TICKS:
        latest, count = tick, count + 1
        tick = following(trigger, tick)
    next_fire_at = first_after(trigger, now)
    on_time = count == 1 and (now - due).total_seconds() <= grace_s
    if on_time:
        return Firing(due, due, 0, next_fire_at)
    if policy is MissedPolicy.RUN_ONCE:
        return Firing(latest, due, count - 1, next_fire_at)
    return Firing(None, due, count, next_fire_at)
