"""Coalescing the final writes of runs that end together into one statement.

A run hands its end to the completer and waits for it to be committed; only then does the run
return, so its message is acked after the write, as before. One batch is in flight at a time
(see `coalescing`): an idle worker writes each end at once, a busy one writes dozens per
statement. If a batch statement fails, each of its ends is written on its own, with the single
write's retries, so one bad row or a deadlock costs its batch nothing but time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import completions
from shared.db.completions import Completion
from shared.db.engine import single_statement
from shared.logging import get_logger
from worker_service.coalescing import Coalescer, settle

log = get_logger(__name__)

WriteOne = Callable[[Completion], Awaitable[bool]]
# Told, after the commit, the ends that were written (the finish hints).
Announce = Callable[[list[Completion]], Awaitable[None]]


async def _announce_nothing(_ended: list[Completion]) -> None:
    return None


class Completer(Coalescer[Completion, bool]):
    """Writes runs' ends in batches; `finish` answers whether the run's end was written."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        write_one: WriteOne,
        max_batch: int,
        announce: Announce = _announce_nothing,
    ) -> None:
        super().__init__(max_batch)
        self.sessionmaker = sessionmaker
        self.write_one = write_one
        self.announce = announce

    async def finish(self, completion: Completion) -> bool:
        """True once the end is committed; False if the token no longer holds the lease."""
        return await self.submit(completion)

    async def _serve(self, batch: list[tuple[Completion, asyncio.Future[bool]]]) -> None:
        if len(batch) == 1:
            await self._write_each(batch)
            return
        try:
            async with self.sessionmaker() as session, single_statement(session):
                written = await completions.finish_tasks(session, [c for c, _ in batch])
        except Exception as exc:
            log.warning("task_batch_write_failed", size=len(batch), error=type(exc).__name__)
            await self._write_each(batch)
            return
        for completion, future in batch:
            settle(future, completion.task_id in written)
        # After the runs are told (their acks need not wait): one round trip a batch.
        await self.announce([c for c, _ in batch if c.task_id in written])

    async def _write_each(self, batch: list[tuple[Completion, asyncio.Future[bool]]]) -> None:
        outcomes = await asyncio.gather(
            *(self.write_one(completion) for completion, _ in batch), return_exceptions=True
        )
        for (_completion, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not future.done():
                    future.set_exception(outcome)
            else:
                settle(future, outcome)
        await self.announce([c for (c, _), ok in zip(batch, outcomes, strict=True) if ok is True])
