"""The secondary existence check a worker runs before claiming: the Redis marker, then the DB.

The outbox makes a message for an uncommitted task impossible, so by design the database
answers at once; the bounded retry stays as a safeguard and a metric counts any retry needed.
"""

from __future__ import annotations

import asyncio
import uuid

from shared import metrics, safeguards
from shared.db import queries
from shared.logging import get_logger
from worker_service.runtime import WorkerRuntime

log = get_logger(__name__)


async def _find(runtime: WorkerRuntime, task_id: uuid.UUID) -> str | None:
    """Where the task was seen (`marker` or `database`), or None."""
    if await safeguards.has_created_marker(runtime.redis, task_id):
        return "marker"
    async with runtime.sessionmaker() as session:
        if await queries.task_exists(session, task_id):
            return "database"
    return None


async def verify_task(runtime: WorkerRuntime, task_id: uuid.UUID) -> bool:
    """True once the task is seen; False after `existence_check_attempts` looks, waiting
    `existence_check_delay_s` (times `existence_check_backoff` each time) between them."""
    settings = runtime.settings
    delay_s = settings.existence_check_delay_s
    for attempt in range(1, settings.existence_check_attempts + 1):
        source = await _find(runtime, task_id)
        if source is not None:
            log.info("task verified", task_id=str(task_id), source=source, attempt=attempt)
            return True
        if attempt < settings.existence_check_attempts:
            metrics.EXISTENCE_CHECK_RETRIES.inc()
            log.warning("task_not_visible_yet", task_id=str(task_id), retry_in_s=delay_s)
            await asyncio.sleep(delay_s)
            delay_s *= settings.existence_check_backoff
    log.warning("task_not_found", task_id=str(task_id), attempts=settings.existence_check_attempts)
    return False


def longest_wait_s(attempts: int, delay_s: float, backoff: float) -> float:
    """The most time `verify_task` can spend sleeping."""
    return sum(delay_s * backoff**index for index in range(attempts - 1))
