"""The batching discipline shared by the claimer and the completer, on a plain event loop."""

from __future__ import annotations

import asyncio

from worker_service.coalescing import Coalescer, settle


class Echo(Coalescer[int, int]):
    """Answers each request with itself, at once."""

    def __init__(self, max_batch: int, parallel: int = 1) -> None:
        super().__init__(max_batch, parallel)
        self.batches: list[list[int]] = []

    async def _serve(self, batch: list[tuple[int, asyncio.Future[int]]]) -> None:
        self.batches.append([request for request, _ in batch])
        for request, future in batch:
            settle(future, request)


async def test_requests_that_arrive_together_go_in_one_batch() -> None:
    echo = Echo(max_batch=8)
    answers = await asyncio.gather(*(echo.submit(index) for index in range(5)))
    assert answers == [0, 1, 2, 3, 4]
    assert echo.batches == [[0, 1, 2, 3, 4]]


async def test_a_request_made_as_the_last_batch_ends_is_served_too() -> None:
    echo = Echo(max_batch=8)
    first = asyncio.ensure_future(echo.submit(1))
    # The first request's step runs and starts a flusher; the second request's step is queued
    # right behind that flusher's, so it arrives after the flusher found nothing more to serve
    # and before the flusher's task has finished.
    await asyncio.sleep(0)
    second = asyncio.ensure_future(echo.submit(2))
    assert await asyncio.wait_for(asyncio.gather(first, second), 2) == [1, 2]
    assert echo.batches == [[1], [2]]
