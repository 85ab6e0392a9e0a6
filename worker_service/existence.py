"""The secondary existence check a worker runs before claiming: the Redis marker, then the DB.

The outbox makes a message for an uncommitted task impossible, so by design the database
answers at once; the bounded retry stays as a safeguard and a metric counts any retry needed.
The database look is the first statement of the claim's own transaction (the claim needs the
task's target anyway), so the check costs no connection or transaction of its own.
"""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from shared import metrics, safeguards
from shared.db import queries
from shared.logging import get_logger
from worker_service.runtime import WorkerRuntime

log = get_logger(__name__)


async def verify_task(
    runtime: WorkerRuntime, session: AsyncSession, task_id: uuid.UUID
) -> queries.TaskSighting | None:
    """The task as `session` sees it, its transaction left open for the claim, once the marker
    or the database shows it; None after `existence_check_attempts` looks, waiting
    `existence_check_delay_s` (times `existence_check_backoff` each time) between them with no
    transaction open. None too when only the marker shows it: nothing to claim."""
    settings = runtime.settings
    delay_s = settings.existence_check_delay_s
    for attempt in range(1, settings.existence_check_attempts + 1):
        marked = settings.redis_safeguards and await safeguards.has_created_marker(
            runtime.redis, task_id
        )
        sighting = await queries.find_task(session, task_id)
        if marked or sighting is not None:
            source = "marker" if marked else "database"
            log.debug("task verified", task_id=str(task_id), source=source, attempt=attempt)
            return sighting
        await session.rollback()
        if attempt < settings.existence_check_attempts:
            metrics.EXISTENCE_CHECK_RETRIES.inc()
            log.warning("task_not_visible_yet", task_id=str(task_id), retry_in_s=delay_s)
            await asyncio.sleep(delay_s)
            delay_s *= settings.existence_check_backoff
    log.warning("task_not_found", task_id=str(task_id), attempts=settings.existence_check_attempts)
    return None


def longest_wait_s(attempts: int, delay_s: float, backoff: float) -> float:
    """The most time `verify_task` can spend sleeping."""
    return sum(delay_s * backoff**index for index in range(attempts - 1))
