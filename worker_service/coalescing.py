"""Requests of many runs that arrive together, served by one statement.

A run hands its request over and waits for its answer. Up to `parallel` batches are in flight
at once; requests that arrive while all of them are busy queue up and go together in the next
(at most `max_batch` at a time). An idle worker serves each request at once, a busy one serves
dozens per statement. A run cancelled while waiting leaves its request to be served all the
same: the statement may already have changed the row.
"""

from __future__ import annotations

import asyncio
import contextvars
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")


class Coalescer(ABC, Generic[Request, Answer]):
    """Serves requests in batches through `_serve`, which settles each waiting future."""

    def __init__(self, max_batch: int, parallel: int = 1) -> None:
        if max_batch < 1 or parallel < 1:
            raise ValueError("max_batch and parallel must be at least 1")
        self.max_batch = max_batch
        self.parallel = parallel
        self.pending: list[tuple[Request, asyncio.Future[Answer]]] = []
        self.flushers: set[asyncio.Task[None]] = set()

    async def submit(self, request: Request) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.enqueue(request, future)
        return await asyncio.shield(future)

    def enqueue(self, request: Request, future: asyncio.Future[Answer]) -> None:
        """Put `request` in the next batch; its answer settles `future`."""
        self.pending.append((request, future))
        if len(self.flushers) < self.parallel:
            # A context of its own: the batch serves many runs, not the one that started it
            # (whose bound log fields would otherwise label the batch's lines).
            flusher = asyncio.create_task(self._flush_pending(), context=contextvars.Context())
            self.flushers.add(flusher)

    async def close(self) -> None:
        """Return once every request handed over so far is served (or has failed)."""
        while self.flushers:
            await asyncio.shield(asyncio.gather(*self.flushers, return_exceptions=True))

    async def _flush_pending(self) -> None:
        try:
            while self.pending:
                batch = self.pending[: self.max_batch]
                del self.pending[: self.max_batch]
                try:
                    await self._serve(batch)
                except BaseException as exc:
                    # Each waiting run gets the error; the next batch is served all the same.
                    for _request, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            # Out of the count in the same step that found nothing pending: a done callback
            # would run a step later, and a request arriving in between would find every
            # flusher busy and wait for one that is already gone.
            self.flushers.discard(asyncio.current_task())

    @abstractmethod
    async def _serve(self, batch: list[tuple[Request, asyncio.Future[Answer]]]) -> None:
        """Answer every request of `batch` (settle its future)."""


def settle(future: asyncio.Future[Answer], answer: Answer) -> None:
    if not future.done():
        future.set_result(answer)
