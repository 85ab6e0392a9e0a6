"""Coalescing the claims of messages that start together into one transaction.

Under load a worker's slots free up by the dozen and each starts a claim; one transaction
claims them all (`lifecycle.claim_batch`), two such transactions at a time so that one
waiting on a busy target's lock does not hold up the rest. A task a busy worker's batch (of
`SECOND_LOOK_MIN_BATCH` or more) left alone gets a second look in a batch `SECOND_LOOK_S`
later: a batch skips rows other transactions hold, and a relay holds the tasks of the
messages it has just published until its commit, a few milliseconds after they may reach a
worker. Whatever the second look leaves alone, what a smaller batch left, and every
claim of a batch that failed (a lock timeout, a database outage), goes through the single
claim (`lifecycle`), which finds out why and acts on it: waits for a task not visible yet,
defers a busy target, fails a task with no attempt left, rides out the outage.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from shared.db.claims import Claim
from shared.logging import get_logger
from worker_service.coalescing import Coalescer, settle

log = get_logger(__name__)

# Claim transactions of one process in flight at once: two, so one held on a busy target's
# lock does not hold up the rest. Four drained a backlog slower: e2e_drain on a quiet
# machine, in turns, 1,311 and 1,211 tasks/s with two against 1,112 and 1,219 with four
# (docs/performance.md).
BATCHES_IN_FLIGHT = 2
# How long after its first batch a task left alone is tried in another. A relay's commit
# follows its publish by a few milliseconds: without the second look, about 3 % of the tasks
# of a drain went to the single claim (a transaction and often a new connection each).
SECOND_LOOK_S = 0.02
# The smallest batch whose leftovers get a second look. A smaller one is a worker taking
# messages one or a few at a time: a single claim waits for the row only as long as the
# relay takes to commit, and costs little when few run at once; a second look would add its
# wait to the dispatch latency.
SECOND_LOOK_MIN_BATCH = 8
# Claims a batch of task ids in one transaction (committed) and answers the claims by id.
ClaimBatch = Callable[[list[uuid.UUID]], Awaitable[dict[uuid.UUID, Claim]]]


class Claimer(Coalescer[uuid.UUID, Claim | None]):
    """Claims tasks in batches through `claim_batch`; `claim` answers one task's claim."""

    def __init__(
        self, claim_batch: ClaimBatch, max_batch: int, second_look_s: float = SECOND_LOOK_S
    ) -> None:
        super().__init__(max_batch, parallel=BATCHES_IN_FLIGHT)
        self.claim_batch = claim_batch
        self.second_look_s = second_look_s
        # The runs waiting for their second look, or in it.
        self.looking_again: set[asyncio.Future[Claim | None]] = set()

    async def claim(self, task_id: uuid.UUID) -> Claim | None:
        """The task, now running under a lease of its own; None: leave it to the single claim."""
        return await self.submit(task_id)

    async def _serve(self, batch: list[tuple[uuid.UUID, asyncio.Future[Claim | None]]]) -> None:
        claimed: dict[uuid.UUID, Claim]
        try:
            claimed = await self.claim_batch([task_id for task_id, _ in batch])
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
            for _task_id, future in batch:
                settle(future, None)
            return
        busy = len(batch) >= SECOND_LOOK_MIN_BATCH
        # A message delivered twice may meet itself in one batch: one claim, one run.
        for task_id, future in batch:
            claim = claimed.pop(task_id, None)
            if claim is None and busy and future not in self.looking_again and not future.done():
                self._look_again(task_id, future)
            else:
                settle(future, claim)

    def _look_again(self, task_id: uuid.UUID, future: asyncio.Future[Claim | None]) -> None:
        self.looking_again.add(future)
        future.add_done_callback(self.looking_again.discard)
        asyncio.get_running_loop().call_later(self.second_look_s, self.enqueue, task_id, future)
