"""Compare each schedule run whose batch has ended with the previous run, once.

Every relay reports, claiming ended runs `FOR UPDATE SKIP LOCKED`; in one transaction per run
the changes are stored on the run and, for a schedule with a changes-only callback and
something changed, a `schedule.run.changed` delivery is written to the deliveries outbox
(delivered, signed and retried like every completion callback).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.claim_rounds import claim_until_short
from shared import run_changes
from shared.db import schedules
from shared.db.models import Schedule, ScheduleRun
from shared.logging import get_logger

log = get_logger(__name__)

CLAIM_LIMIT = 20


async def run_report(session: AsyncSession, run: ScheduleRun) -> list[dict[str, Any]]:
    """The run's changes against the schedule's previous run with a batch."""
    if run.batch_id is None:
        return []
    current = await schedules.batch_results(session, run.batch_id)
    previous_run = await schedules.previous_run(session, run)
    previous = None
    if previous_run is not None and previous_run.batch_id is not None:
        previous = await schedules.batch_results(session, previous_run.batch_id)
    return run_changes.compare(previous, current)


def changed_payload(schedule: Schedule, run: ScheduleRun, changes: list[Any]) -> dict[str, Any]:
    return {
        "event": "schedule.run.changed",
        "schedule": {"id": str(schedule.id), "name": schedule.name},
        "run": {
            "id": run.id,
            "tick_at": run.tick_at.isoformat(),
            "batch_id": str(run.batch_id),
        },
        "changes": changes,
    }


async def report_ended(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Report up to CLAIM_LIMIT ended runs in one transaction; how many."""
    async with sessionmaker() as session, session.begin():
        runs = await schedules.claim_ended_runs(session, CLAIM_LIMIT)
        for run in runs:
            changes = await run_report(session, run)
            await schedules.mark_reported(session, run.id, changes)
            schedule = await session.get(Schedule, run.schedule_id)
            if (
                schedule is not None
                and schedule.callback_changes_only
                and schedule.callback_url is not None
                and changes
            ):
                payload = changed_payload(schedule, run, changes)
                await schedules.insert_change_delivery(
                    session, run.user_id, schedule.callback_url, payload
                )
    return len(runs)


# eq=False: a live part, not a value: equal only to itself, and hashable.
@dataclass(eq=False)
class RunReports:
    sessionmaker: async_sessionmaker[AsyncSession]
    stop: asyncio.Event
    # A report may have committed a changes-only delivery: this relay sends it at once.
    wake_deliverer: Callable[[], None] | None = None

    async def run_once(self) -> None:
        """Report until a claim comes back short; never raises for a database error."""
        await claim_until_short(
            self._report_once, CLAIM_LIMIT, self.stop, log, "schedule_reports_failed"
        )

    async def _report_once(self) -> int:
        reported = await report_ended(self.sessionmaker)
        if reported and self.wake_deliverer is not None:
            self.wake_deliverer()
        return reported
