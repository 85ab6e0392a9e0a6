"""Claim → publish → mark: the relay cycle, knowing nothing of schedulers or signals."""

from __future__ import annotations

import asyncio
import random

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.publisher import Publisher
from shared.db import queries
from shared.errors import PermanentPublishError
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)


def publish_backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """Exponential backoff after `attempts` failed publishes, with ±20 % jitter, capped."""
    delay = min(max_s, base_s * 2 ** max(0, attempts - 1))
    return float(min(max_s, delay * random.uniform(0.8, 1.2)))


class Relay:
    """Publishes committed outbox rows; safe to run in several processes at once."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        publisher: Publisher,
        settings: Settings,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.publisher = publisher
        self.settings = settings
        self.wakeup = asyncio.Event()

    def wake(self) -> None:
        """Ask for a cycle soon (a NOTIFY arrived, or the poll interval passed)."""
        self.wakeup.set()

    async def run_once(self) -> int:
        """One batch in one transaction; returns how many rows were claimed."""
        async with self.sessionmaker() as session, session.begin():
            batch = await queries.claim_batch(session, self.settings.relay_batch_size)
            if not batch:
                return 0
            outcomes = await self.publisher.publish(batch)
            published = []
            for message, error in zip(batch, outcomes, strict=True):
                if error is None:
                    published.append(message.id)
                elif isinstance(error, PermanentPublishError):
                    log.error(
                        "outbox_message_dead",
                        message_id=str(message.message_id),
                        task_id=str(message.task_id),
                        error=str(error),
                    )
                    await queries.mark_dead(session, message.id, str(error))
                else:
                    retry_in_s = publish_backoff_s(
                        message.publish_attempts + 1,
                        self.settings.relay_backoff_base_s,
                        self.settings.relay_backoff_max_s,
                    )
                    log.warning(
                        "outbox_publish_failed",
                        message_id=str(message.message_id),
                        error=str(error),
                        retry_in_s=round(retry_in_s, 3),
                    )
                    await queries.record_publish_failure(
                        session, message.id, str(error), retry_in_s
                    )
            await queries.mark_published(session, published)
        log.info("outbox_batch_published", claimed=len(batch), published=len(published))
        return len(batch)

    async def drain(self) -> int:
        """Run batches until a short one says the due backlog is empty."""
        total = 0
        while True:
            claimed = await self.run_once()
            total += claimed
            if claimed < self.settings.relay_batch_size:
                return total

    async def run(self, stop: asyncio.Event) -> None:
        """Drain on every wake-up until `stop` is set; database errors back off, never kill."""
        failures = 0
        while not stop.is_set():
            self.wakeup.clear()
            try:
                await self.drain()
                failures = 0
            except (SQLAlchemyError, OSError) as exc:
                failures += 1
                delay_s = publish_backoff_s(failures, 0.2, self.settings.relay_backoff_max_s)
                log.warning("relay_cycle_failed", error=type(exc).__name__, retry_in_s=delay_s)
                await _wait_any(stop, None, delay_s)
                continue
            await _wait_any(stop, self.wakeup, None)


async def _wait_any(
    stop: asyncio.Event, other: asyncio.Event | None, timeout_s: float | None
) -> None:
    waiters = [asyncio.create_task(stop.wait())]
    if other is not None:
        waiters.append(asyncio.create_task(other.wait()))
    _done, pending = await asyncio.wait(
        waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
    )
    for task in pending:
        task.cancel()
