"""Answer a read as soon as its task (or every task of its batch) has ended, without polling.

One LISTEN connection per API process receives the `scan_task_finished` NOTIFY that a
trigger sends in the transaction of every terminal write; it wakes the requests waiting on
that task or batch, which then read the database again. A waiting request holds no
database connection, only an `asyncio.Event`. The number of waiting requests is bounded,
per process and per client (a user), so that one client cannot take every place.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeVar

import asyncpg

from api_service.schemas import ErrorResponse
from shared import backoff, keys, metrics
from shared.errors import TooManyClientWaiters, TooManyWaiters
from shared.logging import get_logger

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

T = TypeVar("T")
HEALTH_CHECK_INTERVAL_S = 5.0
RECONNECT_MIN_S = 0.1
# The relay's listener reconnects within the same bound (SCAN_RELAY_LISTEN_RECONNECT_MAX_S).
RECONNECT_MAX_S = 10.0
# How the connection shows in pg_stat_activity.
APPLICATION_NAME = "scan-outbox-api-waiters"
# Without a session to LISTEN on (only a transaction pooler), every waiter reads again this
# often: a wait then ends up to this late, at one read per waiter per period.
POLL_INTERVAL_S = 1.0


class FinishWaiters:
    """Waiters by task id and batch id, woken by the database's finish notifications."""

    def __init__(
        self,
        dsn: str | None,
        max_waiters: int,
        reconnect_max_s: float,
        server_settings: dict[str, str] | None = None,
        read_slots: int = 10,
        max_client_waiters: int | None = None,
    ) -> None:
        self.dsn = dsn
        self.max_waiters = max_waiters
        self.max_client_waiters = max_waiters if max_client_waiters is None else max_client_waiters
        # Each client's waiting requests, with the monotonic time each one's wait is over.
        self._client_waits: dict[Hashable, dict[asyncio.Event, float]] = {}
        # Woken waiters read again at most this many at once (the pool's size): a burst of
        # wakes then reuses pooled connections instead of opening and closing overflow ones.
        self.read_slots = asyncio.Semaphore(read_slots)
        self.reconnect_max_s = reconnect_max_s
        self.server_settings = server_settings or {}
        self._waiters: dict[uuid.UUID, set[asyncio.Event]] = {}
        self.count = 0
        self.connected = False

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

    def _notified(self, *args: Any) -> None:
        task_id, _, batch_id = str(args[-1]).partition(",")
        for raw in (task_id, batch_id):
            with contextlib.suppress(ValueError):
                self._wake(uuid.UUID(raw))

    async def _listen_until_lost(self, dsn: str, stop: asyncio.Event) -> None:
        connection = await asyncpg.connect(
            dsn, server_settings={**self.server_settings, "application_name": APPLICATION_NAME}
        )
        try:
            await connection.add_listener(keys.TASK_FINISHED_CHANNEL, self._notified)
            self.connected = True
            # Whatever ended while nobody listened: every waiter reads again.
            self._wake_all()
            while not stop.is_set() and not connection.is_closed():
                try:
                    await asyncio.wait_for(stop.wait(), HEALTH_CHECK_INTERVAL_S)
                except TimeoutError:
                    # A dead connection is only noticed when used.
                    await connection.execute("SELECT 1", timeout=HEALTH_CHECK_INTERVAL_S)
        finally:
            self.connected = False
            if not connection.is_closed():
                await connection.close(timeout=2)

    async def _poll(self, stop: asyncio.Event) -> None:
        log.info("waiters_listen_off", reason="no session URL", poll_interval_s=POLL_INTERVAL_S)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_INTERVAL_S)
            self._wake_all()

    async def run(self, stop: asyncio.Event) -> None:
        """LISTEN until `stop`, reconnecting with backoff; waiters still end at their
        deadline while the connection is down. Without a `dsn`, wake every waiter each
        `POLL_INTERVAL_S` instead."""
        dsn = self.dsn
        if dsn is None:
            await self._poll(stop)
            return
        failures = 0
        while not stop.is_set():
            try:
                await self._listen_until_lost(dsn, stop)
                failures, error = 0, "connection closed"
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                error = type(exc).__name__
            if stop.is_set():
                return
            failures += 1
            delay_s = backoff.backoff_s(failures, RECONNECT_MIN_S, self.reconnect_max_s)
            log.warning("waiters_listen_lost", error=error, retry_in_s=round(delay_s, 3))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)


async def wait_until(
    waiters: FinishWaiters,
    key: uuid.UUID,
    wait_s: float,
    read: Callable[[], Awaitable[T]],
    ended: Callable[[T], bool],
    settle_s: float = 0.0,
    client: Hashable = None,
) -> T:
    """`read()` again each time `key` is notified, until `ended` holds or `wait_s` passes;
    the last value read. `settle_s` gathers a burst of notifications into one read. The
    wait counts against `client`'s share of the waiters."""
    deadline = time.monotonic() + wait_s
    value = await read()
    if wait_s <= 0 or ended(value):
        return value
    async with waiters.watch(key, client, deadline) as event:
        while True:
            # Cleared before reading: a notification during the read is not lost.
            event.clear()
            async with waiters.read_slots:
                value = await read()
            remaining_s = deadline - time.monotonic()
            if ended(value) or remaining_s <= 0:
                return value
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining_s)
                await asyncio.sleep(min(settle_s, max(0.0, deadline - time.monotonic())))
