"""APScheduler jobs of the relay: the fallback poll (and, later, maintenance)."""

from __future__ import annotations

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from relay_service.relay import Relay
from shared.settings import Settings


def build_scheduler(relay: Relay, settings: Settings) -> AsyncIOScheduler:
    """Must be started inside the running event loop."""
    scheduler = AsyncIOScheduler()
    interval_s = settings.relay_poll_interval_s
    scheduler.add_job(
        relay.wake,
        "interval",
        seconds=interval_s,
        id="outbox_poll",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(interval_s) + 1),
    )
    return scheduler
