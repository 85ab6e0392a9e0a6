"""Coalescing the final writes of runs that end together into one statement.

A run hands its end to the completer and waits for it to be committed; only then does the run
return, so its message is acked after the write, as before. While one statement is in flight,
the ends that arrive queue up and go together in the next one (at most `max_batch` at a time):
an idle worker writes each end at once, a busy one writes dozens per statement. If a batch
statement fails, each of its ends is written on its own, with the single write's retries, so
one bad row or a deadlock costs its batch nothing but time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import completions
from shared.db.completions import Completion
from shared.db.engine import autocommit
from shared.logging import get_logger

log = get_logger(__name__)

WriteOne = Callable[[Completion], Awaitable[bool]]
_Waiting = tuple[Completion, "asyncio.Future[bool]"]


class Completer:
    """Writes runs' ends in batches; `finish` answers whether the run's end was written."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        write_one: WriteOne,
        max_batch: int,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.sessionmaker = sessionmaker
        self.write_one = write_one
        self.max_batch = max_batch
        self.pending: list[_Waiting] = []
        self.flusher: asyncio.Task[None] | None = None

    async def finish(self, completion: Completion) -> bool:
        """True once the end is committed; False if the token no longer holds the lease."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.pending.append((completion, future))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flush_pending())
        # A run cancelled while waiting leaves its end to be written all the same.
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Return once every end handed over so far is written (or has failed)."""
        while self.flusher is not None and not self.flusher.done():
            await asyncio.shield(self.flusher)

    async def _flush_pending(self) -> None:
        while self.pending:
            batch = self.pending[: self.max_batch]
            del self.pending[: self.max_batch]
            await self._flush(batch)

    async def _flush(self, batch: list[_Waiting]) -> None:
        if len(batch) == 1:
            await self._write_each(batch)
            return
        try:
            async with self.sessionmaker() as session:
                await autocommit(session)
                written = await completions.finish_tasks(session, [c for c, _ in batch])
        except Exception as exc:
            log.warning("task_batch_write_failed", size=len(batch), error=type(exc).__name__)
            await self._write_each(batch)
            return
        for completion, future in batch:
            _settle(future, completion.task_id in written)

    async def _write_each(self, batch: list[_Waiting]) -> None:
        outcomes = await asyncio.gather(
            *(self.write_one(completion) for completion, _ in batch), return_exceptions=True
        )
        for (_completion, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not future.done():
                    future.set_exception(outcome)
            else:
                _settle(future, outcome)


def _settle(future: asyncio.Future[bool], written: bool) -> None:
    if not future.done():
        future.set_result(written)
