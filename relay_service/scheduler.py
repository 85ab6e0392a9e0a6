"""The relay's periodic work, in one registry.

Each job has a name, the setting that spaces its runs, whether it runs on the leader only or
on every relay, and one `run_once`. `relay_jobs` lists them all; `build_scheduler` ticks
them with APScheduler: one run of a job at a time, missed runs merged into one, a job for
the leader skipped while this relay does not lead, and a failed run logged and tried again
at the next tick.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from relay_service.deliverer import Deliverer
from relay_service.firing import Firing
from relay_service.leader import MaintenanceJobs
from relay_service.relay import Relay
from relay_service.run_reports import RunReports
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

LEADER = True
EVERY_RELAY = False


@dataclass(frozen=True)
class Job:
    name: str
    # The interval setting's value.
    interval_s: float
    leader_only: bool
    run_once: Callable[[], Awaitable[object]]
    # First run as the scheduler starts, not one interval later.
    at_start: bool = False
    # Up to this much added to or taken from each interval.
    jitter_s: float = 0.0


def relay_jobs(
    settings: Settings,
    relay: Relay,
    leader: MaintenanceJobs | None = None,
    deliverer: Deliverer | None = None,
    firing: Firing | None = None,
    reports: RunReports | None = None,
) -> list[Job]:
    """Every periodic job of a relay built of these parts (a part left out has none)."""

    async def poll_outbox() -> None:
        # The poll also picks up rows whose available_at has come (backoff, delays),
        # which no hint announces.
        relay.wake()

    jobs = [Job("outbox_poll", settings.relay_poll_interval_s, EVERY_RELAY, poll_outbox)]
    if leader is not None:
        jobs += [
            # Every relay checks: that is how one that does not lead takes the lead.
            Job(
                "leader",
                settings.relay_leader_check_interval_s,
                EVERY_RELAY,
                leader.check_leader,
                at_start=True,
            ),
            Job("redispatch", settings.relay_redispatch_interval_s, LEADER, leader.redispatch),
            Job(
                "broker_check", settings.relay_broker_check_interval_s, LEADER, leader.check_broker
            ),
            Job("outbox_prune", settings.relay_prune_interval_s, LEADER, leader.prune),
            # Only the leader reports the backlog: max() over relays stays right.
            Job("outbox_gauges", settings.relay_gauges_interval_s, LEADER, leader.refresh_gauges),
        ]
    if deliverer is not None:
        jobs += [
            # A delivery out of tries is rescued like a task out of its lease.
            Job(
                "callbacks_bury",
                settings.relay_redispatch_interval_s,
                LEADER,
                deliverer.bury_exhausted,
            ),
            Job("callbacks_prune", settings.relay_prune_interval_s, LEADER, deliverer.prune),
            # The table's counts, on every relay (docs/api.md: take max() over relays).
            Job(
                "callbacks_gauges",
                settings.relay_gauges_interval_s,
                EVERY_RELAY,
                deliverer.refresh_gauges,
            ),
        ]
    if firing is not None:
        # Every relay, not only the leader: the claims skip each other's rows (firing.py). The
        # jitter changes which relay looks first from one look to the next: without it the
        # relay whose timer runs a little ahead takes every tick, and the others only stand by.
        poll_s = settings.schedule_poll_interval_s
        jobs.append(Job("schedules", poll_s, EVERY_RELAY, firing.run_once, jitter_s=poll_s / 4))
    if reports is not None:
        jobs.append(
            Job("run_reports", settings.schedule_report_interval_s, EVERY_RELAY, reports.run_once)
        )
    return jobs


def _guarded(job: Job, leads: Callable[[], bool]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        if job.leader_only and not leads():
            return
        try:
            await job.run_once()
        except Exception as exc:  # a job outlives any error: the next tick tries again
            log.warning("relay_job_failed", job=job.name, error=type(exc).__name__)

    return run


def build_scheduler(jobs: Sequence[Job], leads: Callable[[], bool]) -> AsyncIOScheduler:
    """A scheduler running `jobs`, those for the leader only while `leads()`; it must be
    started inside the running event loop."""
    scheduler = AsyncIOScheduler()
    for job in jobs:
        extra: dict[str, object] = {"next_run_time": datetime.now(UTC)} if job.at_start else {}
        if job.jitter_s:
            extra["jitter"] = job.jitter_s
        scheduler.add_job(
            _guarded(job, leads),
            "interval",
            seconds=job.interval_s,
            id=job.name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(job.interval_s) + 1),
            **extra,
        )
    return scheduler
