"""LISTEN for outbox NOTIFYs on a dedicated connection, reconnecting with backoff."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg

from shared.logging import get_logger

log = get_logger(__name__)

HEALTH_CHECK_INTERVAL_S = 1.0


class NotifyListener:
    """Calls `on_notify` for every NOTIFY on `channel`, and once after each (re)connect."""

    def __init__(
        self, dsn: str, channel: str, on_notify: Callable[[], None], reconnect_max_s: float
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.on_notify = on_notify
        self.reconnect_max_s = reconnect_max_s
        self.connected = False

    def _notified(self, *_args: Any) -> None:
        self.on_notify()

    async def _listen_until_lost(self, stop: asyncio.Event) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.add_listener(self.channel, self._notified)
            self.connected = True
            log.info("relay_listening", channel=self.channel)
            # Rows committed while nobody listened are picked up by this wake-up.
            self.on_notify()
            while not stop.is_set() and not connection.is_closed():
                try:
                    await asyncio.wait_for(stop.wait(), HEALTH_CHECK_INTERVAL_S)
                except TimeoutError:
                    await connection.execute("SELECT 1")
        finally:
            self.connected = False
            if not connection.is_closed():
                await connection.close(timeout=2)

    async def run(self, stop: asyncio.Event) -> None:
        delay_s = 0.1
        while not stop.is_set():
            try:
                await self._listen_until_lost(stop)
                delay_s = 0.1
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("relay_listen_lost", error=type(exc).__name__, retry_in_s=delay_s)
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)
            delay_s = min(self.reconnect_max_s, delay_s * 2)
