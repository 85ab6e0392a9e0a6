"""Keeping a task's lease alive while its scan runs, and noticing when it is gone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from shared.db import claims
from shared.logging import get_logger
from worker_service.runtime import WorkerRuntime

log = get_logger(__name__)
T = TypeVar("T")


class LeaseLost(Exception):
    """The task is no longer this worker's: it was cancelled, or another worker took it over."""


async def _renew(runtime: WorkerRuntime, task_id: uuid.UUID, lease_token: uuid.UUID) -> bool:
    """False only when the database says the lease is gone. A renewal that cannot reach the
    database is tried again next time: the final write is fenced by the token anyway."""
    try:
        async with runtime.sessionmaker() as session, session.begin():
            return await claims.renew_lease(
                session, task_id, lease_token, runtime.settings.worker_lease_s
            )
    except (SQLAlchemyError, OSError) as exc:
        log.warning("lease_renewal_failed", task_id=str(task_id), error=type(exc).__name__)
        return True


async def run_under_lease(
    runtime: WorkerRuntime, task_id: uuid.UUID, lease_token: uuid.UUID, work: Awaitable[T]
) -> T:
    """Await `work`, renewing the lease every third of its length; if a renewal finds the lease
    gone, cancel `work` and raise LeaseLost."""
    interval_s = runtime.settings.worker_lease_s / 3
    job = asyncio.ensure_future(work)
    try:
        while True:
            done, _pending = await asyncio.wait({job}, timeout=interval_s)
            if done:
                return job.result()
            if not await _renew(runtime, task_id, lease_token):
                raise LeaseLost
    finally:
        if not job.done():
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)
