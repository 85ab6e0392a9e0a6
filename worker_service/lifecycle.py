"""Claim, scan, finish: a task's life on a worker, every write fenced by the lease token."""

from __future__ import annotations

import enum
import time
import uuid

from shared.db import queries
from shared.db.models import TaskStatus
from shared.logging import get_logger
from worker_service.runtime import WorkerRuntime

log = get_logger(__name__)


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # nothing to claim: a duplicate, stale or unknown message
    LEASE_LOST = "lease_lost"  # another owner holds the task now; our result is dropped


async def run_task(runtime: WorkerRuntime, task_id: uuid.UUID) -> Outcome:
    """Run the task once if this call wins the claim; otherwise do nothing."""
    lease_token = uuid.uuid4()
    async with runtime.sessionmaker() as session, session.begin():
        task = await queries.claim_task(
            session, task_id, runtime.owner, lease_token, runtime.settings.worker_lease_s
        )
    if task is None:
        log.info("task_not_claimable", task_id=str(task_id))
        return Outcome.SKIPPED
    log.info("task_started", task_id=str(task_id), attempt=task.attempts)
    started = time.perf_counter()
    try:
        result = await runtime.scanner(task.target_domain, task.config, runtime.settings)
        status, error = TaskStatus.SUCCEEDED, None
    except Exception as exc:  # the scanner reports target problems as findings, so this is a bug
        log.exception("scan_crashed", task_id=str(task_id))
        result, status, error = None, TaskStatus.FAILED, f"scan error: {type(exc).__name__}"
    async with runtime.sessionmaker() as session, session.begin():
        finished = await queries.finish_task(session, task_id, lease_token, status, result, error)
    duration_ms = round((time.perf_counter() - started) * 1000)
    if not finished:
        log.warning("task_lease_lost", task_id=str(task_id), duration_ms=duration_ms)
        return Outcome.LEASE_LOST
    log.info("task_finished", task_id=str(task_id), status=status.value, duration_ms=duration_ms)
    return Outcome(status.value)
