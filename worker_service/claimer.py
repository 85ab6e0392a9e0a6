"""Coalescing the claims of messages that start together into one transaction.

Under load a worker's slots free up by the dozen and each starts a claim; one transaction
(`shared.db.claim_batches`) claims them all, a few such transactions at a time so that one
waiting on a busy target's lock does not hold up the rest. Whatever a batch leaves alone, and
every claim of a batch that failed (a lock timeout, a database outage), goes through the
single claim (`lifecycle`), which finds out why and acts on it: waits for a task not visible
yet, defers a busy target, fails a task with no attempt left, rides out the outage.
"""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import claim_batches
from shared.db.claims import ClaimedTask
from shared.logging import get_logger
from shared.settings import Settings
from worker_service.coalescing import Coalescer, settle

log = get_logger(__name__)

Claim = tuple[ClaimedTask, uuid.UUID]
# Claim transactions of one process in flight at once.
BATCHES_IN_FLIGHT = 4


class Claimer(Coalescer[uuid.UUID, Claim | None]):
    """Claims tasks in batches for `owner`; `claim` answers the claimed task and its token."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, owner: str
    ) -> None:
        super().__init__(settings.worker_claim_batch, parallel=BATCHES_IN_FLIGHT)
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.owner = owner

    async def claim(self, task_id: uuid.UUID) -> Claim | None:
        """The task, now running under a lease of its own; None: leave it to the single claim."""
        return await self.submit(task_id)

    async def _serve(self, batch: list[tuple[uuid.UUID, asyncio.Future[Claim | None]]]) -> None:
        task_ids = [task_id for task_id, _ in batch]
        settings = self.settings
        claimed: dict[uuid.UUID, Claim]
        try:
            async with self.sessionmaker() as session:
                await claim_batches.lock_targets(session, task_ids, settings.target_lock_timeout_s)
                claimed = await claim_batches.claim_tasks(
                    session,
                    task_ids,
                    settings.per_target_concurrency,
                    self.owner,
                    settings.worker_lease_s,
                )
                await session.commit()
        except Exception as exc:
            # Nothing of the transaction was committed (unless the COMMIT was lost in flight:
            # the single claim then finds those tasks running under a live lease).
            orig = getattr(exc, "orig", None)
            log.warning(
                "task_batch_claim_failed",
                size=len(batch),
                error=type(exc).__name__,
                sqlstate=getattr(orig, "sqlstate", None),
            )
            claimed = {}
        # A message delivered twice may meet itself in one batch: one claim, one run.
        for task_id, future in batch:
            settle(future, claimed.pop(task_id, None))
