"""APScheduler jobs of the relay: the fallback poll, leader election and maintenance, and on
every relay the firing of due schedules and the reports of their ended runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from relay_service.firing import Firing
from relay_service.leader import MaintenanceJobs
from relay_service.relay import Relay
from relay_service.run_reports import RunReports
from shared.settings import Settings


def _every(
    scheduler: AsyncIOScheduler,
    job: Callable[[], Awaitable[None]] | Callable[[], None],
    interval_s: float,
    job_id: str,
    *,
    now: bool = False,
    jitter_s: float | None = None,
) -> None:
    # One instance at a time, missed runs merged into one: a slow job never piles up.
    extra: dict[str, object] = {"next_run_time": datetime.now(UTC)} if now else {}
    if jitter_s:
        extra["jitter"] = jitter_s
    scheduler.add_job(
        job,
        "interval",
        seconds=interval_s,
        id=job_id,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(interval_s) + 1),
        **extra,
    )


def build_scheduler(
    relay: Relay,
    settings: Settings,
    jobs: MaintenanceJobs | None = None,
    firing: Firing | None = None,
    reports: RunReports | None = None,
) -> AsyncIOScheduler:
    """Must be started inside the running event loop."""
    scheduler = AsyncIOScheduler()
    # The poll also picks up rows whose available_at has come (backoff, delays),
    # which no NOTIFY announces.
    _every(scheduler, relay.wake, settings.relay_poll_interval_s, "outbox_poll")
    if jobs is not None:
        _every(
            scheduler, jobs.check_leader, settings.relay_leader_check_interval_s, "leader", now=True
        )
        _every(scheduler, jobs.redispatch, settings.relay_redispatch_interval_s, "redispatch")
        _every(scheduler, jobs.check_broker, settings.relay_broker_check_interval_s, "broker")
        _every(scheduler, jobs.prune, settings.relay_prune_interval_s, "prune")
        _every(scheduler, jobs.refresh_gauges, settings.relay_gauges_interval_s, "gauges")
    # Every relay, not only the leader: the claims skip each other's rows (firing.py). The
    # jitter changes which relay looks first from one look to the next: without it the relay
    # whose timer runs a little ahead takes every tick, and the others only ever stand by.
    if firing is not None:
        poll_s = settings.schedule_poll_interval_s
        _every(scheduler, firing.run_once, poll_s, "schedules", jitter_s=poll_s / 4)
    if reports is not None:
        _every(scheduler, reports.run_once, settings.schedule_report_interval_s, "run_reports")
    return scheduler
