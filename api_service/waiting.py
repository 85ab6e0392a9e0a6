"""Answer a read as soon as its task (or every task of its batch) has ended.

One Redis subscription per API process receives the finish hints that the writers of
terminal states (the worker's final write, a cancel) send after their commit; a hint wakes
the requests waiting on that task or batch, which then read the database again. Every
`wait_poll_interval_s` one statement also asks which of the waited tasks and batches have
ended and wakes their waiters, so an end that sent no hint (a give-up by the relay's
recovery) or whose hint was lost is answered at most that late. A
waiting request holds no database connection, only an `asyncio.Event`. The number of
waiting requests is bounded, per process and per client (a user), so that one client
cannot take every place.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from typing import Annotated, TypeVar

from fastapi import Query
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service.schemas import ErrorResponse
from shared import metrics, wakeups
from shared.db import tasks
from shared.errors import TooManyClientWaiters, TooManyWaiters
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# How a GET with `wait` over the client's share answers, for the routes' OpenAPI.
CLIENT_SHARE_RESPONSES: dict[int | str, dict[str, object]] = {
    429: {
        "model": ErrorResponse,
        "description": "This user already has `SCAN_WAIT_MAX_WAITERS_PER_CLIENT` requests "
        "waiting on this API process; `Retry-After` says when one is certainly over",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    }
}

# The `wait` query parameter of the reads that can wait (checked by `deps.checked_wait_s`).
WaitQuery = Annotated[
    float,
    Query(
        ge=0,
        description="Seconds to wait for the end (at most `SCAN_WAIT_MAX_S`, 30): answered as "
        "soon as it ends, or with the current state when the wait is over. 0: at once.",
    ),
]

T = TypeVar("T")
# The ids, among those given, of the tasks that have ended and the batches that have.
FindEnded = Callable[[list[uuid.UUID]], Awaitable[set[uuid.UUID]]]
# The relay's listener reconnects within the same bound (SCAN_RELAY_LISTEN_RECONNECT_MAX_S).
RECONNECT_MAX_S = 10.0
# How the subscription shows in Redis's CLIENT LIST.
CLIENT_NAME = "scan-outbox-api-waiters"


class FinishWaiters:
    """Waiters by task id and batch id, woken by finish hints and by their own poll."""

    def __init__(
        self,
        hints_from: Settings | None,
        max_waiters: int,
        reconnect_max_s: float,
        read_slots: int = 10,
        max_client_waiters: int | None = None,
        poll_interval_s: float = 1.0,
        find_ended: FindEnded | None = None,
    ) -> None:
        # None: no hints, the poll alone wakes the waiters.
        self.hints_from = hints_from
        self.poll_interval_s = poll_interval_s
        self.find_ended = find_ended
        self.max_waiters = max_waiters
        self.max_client_waiters = max_waiters if max_client_waiters is None else max_client_waiters
        # Each client's waiting requests, with the monotonic time each one's wait is over.
        self._client_waits: dict[Hashable, dict[asyncio.Event, float]] = {}
        # Woken waiters read again at most this many at once (the pool's size): a burst of
        # wakes then reuses pooled connections instead of opening and closing overflow ones.
        self.read_slots = asyncio.Semaphore(read_slots)
        self.reconnect_max_s = reconnect_max_s
        self._waiters: dict[uuid.UUID, set[asyncio.Event]] = {}
        self.count = 0
        self.listener: wakeups.HintListener | None = None
        if hints_from is not None:
            self.listener = wakeups.HintListener(
                hints_from, {wakeups.FINISHED: self.hinted}, reconnect_max_s, CLIENT_NAME
            )

    @property
    def connected(self) -> bool:
        """Whether finish hints are arriving (else waits end by their poll)."""
        return self.listener is not None and self.listener.connected

    @contextlib.asynccontextmanager
    async def watch(
        self, key: uuid.UUID, client: Hashable = None, deadline: float = math.inf
    ) -> AsyncIterator[asyncio.Event]:
        """An event set whenever `key` (a task or batch id) may have changed, for a wait of
        `client` over at `deadline` (monotonic); TooManyWaiters when the process has
        `max_waiters`, else TooManyClientWaiters when `client` has `max_client_waiters`."""
        self._admit(client)
        event = asyncio.Event()
        self.count += 1
        metrics.API_WAITERS.inc()
        mine = self._client_waits.setdefault(client, {})
        mine[event] = deadline
        waiting = self._waiters.setdefault(key, set())
        waiting.add(event)
        try:
            yield event
        finally:
            self.count -= 1
            metrics.API_WAITERS.dec()
            waiting.discard(event)
            if not waiting:
                self._waiters.pop(key, None)
            mine.pop(event, None)
            if not mine:
                self._client_waits.pop(client, None)

    def _admit(self, client: Hashable) -> None:
        """Raise when the process's limit, or else `client`'s share, is full."""
        if self.count >= self.max_waiters:
            metrics.API_WAITERS_REFUSED.labels(limit="process").inc()
            raise TooManyWaiters(
                f"this server already has {self.max_waiters} requests waiting; "
                "ask again without wait, or later",
                field="wait",
            )
        client_waits = self._client_waits.get(client, {})
        if len(client_waits) >= self.max_client_waiters:
            metrics.API_WAITERS_REFUSED.labels(limit="client").inc()
            raise TooManyClientWaiters(
                f"you already have {self.max_client_waiters} requests waiting on this server, "
                "your share (SCAN_WAIT_MAX_WAITERS_PER_CLIENT); ask again without wait, or "
                "once one of them has been answered",
                retry_after_s=self._retry_after_s(client_waits.values()),
            )

    @staticmethod
    def _retry_after_s(deadlines: Iterable[float]) -> int:
        """Whole seconds until the soonest of `deadlines`, at least 1: by then that wait is
        over and its place free (sooner when its task ends first)."""
        soonest = min(deadlines, default=math.inf)
        if math.isinf(soonest):
            return 1
        return max(1, math.ceil(soonest - time.monotonic()))

    def _wake(self, key: uuid.UUID) -> None:
        for event in self._waiters.get(key, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    def hinted(self, payload: str | None) -> None:
        """A finish hint ("task_id,batch_id", several joined by ";"): wake who waits on
        any of them; None (hints may have been missed): wake every waiter."""
        if payload is None:
            self._wake_all()
            return
        for ended in payload.split(";"):
            task_id, _, batch_id = ended.partition(",")
            for raw in (task_id, batch_id):
                with contextlib.suppress(ValueError):
                    self._wake(uuid.UUID(raw))

    async def run(self, stop: asyncio.Event) -> None:
        """Poll, and take finish hints, until `stop` (resubscribing with backoff); waiters
        still end at their deadline while both are off."""
        loops = [self._poll(stop)]
        if self.listener is not None:
            loops.append(self.listener.run(stop))
        await asyncio.gather(*loops)

    async def _poll(self, stop: asyncio.Event) -> None:
        """Every `poll_interval_s`, wake the waiters whose task or batch has ended."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval_s)
            if stop.is_set() or not self._waiters or self.find_ended is None:
                continue
            try:
                async with self.read_slots:
                    ended = await self.find_ended(list(self._waiters))
            except Exception as exc:  # the poll outlives any error; waiters still time out
                log.warning("waiters_poll_failed", error=type(exc).__name__)
                continue
            for key in ended:
                self._wake(key)


def ended_in(sessionmaker: async_sessionmaker[AsyncSession]) -> FindEnded:
    """`FindEnded` over the database, one statement a call."""

    async def find_ended(ids: list[uuid.UUID]) -> set[uuid.UUID]:
        async with sessionmaker() as session:
            return await tasks.ended_among(session, ids)

    return find_ended


async def wait_until(
    waiters: FinishWaiters,
    key: uuid.UUID,
    wait_s: float,
    read: Callable[[], Awaitable[T]],
    ended: Callable[[T], bool],
    settle_s: float = 0.0,
    client: Hashable = None,
) -> T:
    """`read()` again each time `key` is woken (a hint, or the poll finding it ended), until
    `ended` holds or `wait_s` passes; the last value read. `settle_s` gathers a burst of
    hints into one read. The wait counts against `client`'s share."""
    deadline = time.monotonic() + wait_s
    value = await read()
    if wait_s <= 0 or ended(value):
        return value
    async with waiters.watch(key, client, deadline) as event:
        while True:
            # Cleared before reading: a hint during the read is not lost.
            event.clear()
            async with waiters.read_slots:
                value = await read()
            remaining_s = deadline - time.monotonic()
            if ended(value) or remaining_s <= 0:
                return value
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining_s)
                await asyncio.sleep(min(settle_s, max(0.0, deadline - time.monotonic())))
