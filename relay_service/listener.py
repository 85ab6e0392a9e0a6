"""LISTEN for outbox NOTIFYs on a dedicated connection, reconnecting with backoff."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg

from shared import backoff
from shared.logging import get_logger

log = get_logger(__name__)

HEALTH_CHECK_INTERVAL_S = 1.0
RECONNECT_MIN_S = 0.1
# How the connection shows in pg_stat_activity.
APPLICATION_NAME = "scan-outbox-relay-listener"


class NotifyListener:
    """Calls `on_notify` for every NOTIFY on `channel`, and once after each (re)connect.

    While the connection is down no NOTIFY arrives; the relay's poll job covers the gap.
    """

    def __init__(
        self,
        dsn: str,
        channel: str,
        on_notify: Callable[[], None],
        reconnect_max_s: float,
        server_settings: dict[str, str] | None = None,
    ) -> None:
        self.dsn = dsn
        self.server_settings = server_settings or {}
        self.channel = channel
        self.on_notify = on_notify
        self.reconnect_max_s = reconnect_max_s
        self.connected = False
        self.connections = 0

    def _notified(self, *_args: Any) -> None:
        self.on_notify()

    async def _listen_until_lost(self, stop: asyncio.Event) -> None:
        connection = await asyncpg.connect(
            self.dsn, server_settings={**self.server_settings, "application_name": APPLICATION_NAME}
        )
        try:
            await connection.add_listener(self.channel, self._notified)
            self.connected = True
            self.connections += 1
            log.info("relay_listening", channel=self.channel)
            # Rows committed while nobody listened are picked up by this wake-up.
            self.on_notify()
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

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                await self._listen_until_lost(stop)
                failures = 0
                error = "connection closed"
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                error = type(exc).__name__
            if stop.is_set():
                return
            failures += 1
            delay_s = backoff.backoff_s(failures, RECONNECT_MIN_S, self.reconnect_max_s)
            log.warning("relay_listen_lost", error=error, retry_in_s=round(delay_s, 3))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)
