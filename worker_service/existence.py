"""The existence check a worker runs before claiming: the database, then the Redis marker.

Messages the relay sends always find their task at the first look: the outbox publishes only
committed rows. The check is for messages that did not come through the outbox: producers that
still send directly, and may send before they commit (the race the outbox removes). Such a
message waits, with backoff, for its task to appear, and is dropped with a log line once the
retry budget is spent. The marker decides one case: a task the database does not have but
whose marker exists was committed and has since been deleted, so waiting cannot help.
The database look is the first statement of the claim's own transaction (the claim needs the
task's target anyway), so the check costs no connection or transaction of its own, and no
Redis call when the task is there.
"""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from shared import metrics, safeguards
from shared.db import claims
from shared.logging import get_logger
from worker_service.runtime import WorkerRuntime

log = get_logger(__name__)


async def verify_task(
    runtime: WorkerRuntime, session: AsyncSession, task_id: uuid.UUID
) -> claims.TaskSighting | None:
    """The task as `session` sees it, its transaction left open for the claim; None once
    `existence_check_attempts` looks have not found it (waiting `existence_check_delay_s`,
    times `existence_check_backoff` each time, with no transaction open), or at once when its
    marker shows it was committed and is gone."""
    settings = runtime.settings
    delay_s = settings.existence_check_delay_s
    waited_s = 0.0
    for attempt in range(1, settings.existence_check_attempts + 1):
        sighting = await claims.find_task(session, task_id)
        if sighting is not None:
            log.debug("task verified", task_id=str(task_id), attempt=attempt)
            return sighting
        await session.rollback()
        if settings.redis_safeguards and await safeguards.has_created_marker(
            runtime.redis, task_id
        ):
            log.warning("task_deleted", task_id=str(task_id), detail="committed, then deleted")
            return None
        if attempt < settings.existence_check_attempts:
            metrics.EXISTENCE_CHECK_RETRIES.inc()
            log.warning("task_not_visible_yet", task_id=str(task_id), retry_in_s=delay_s)
            await asyncio.sleep(delay_s)
            waited_s += delay_s
            delay_s *= settings.existence_check_backoff
    log.warning(
        "task_not_found",
        task_id=str(task_id),
        attempts=settings.existence_check_attempts,
        waited_s=round(waited_s, 3),
        detail="message dropped: its task was never committed (a producer that sends "
        "before it commits, or one whose transaction rolled back)",
    )
    return None


def longest_wait_s(attempts: int, delay_s: float, backoff: float) -> float:
    """The most time `verify_task` can spend sleeping."""
    return sum(delay_s * backoff**index for index in range(attempts - 1))
