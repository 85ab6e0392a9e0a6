"""Claim → publish → mark: the relay cycle, knowing nothing of schedulers or signals."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relay_service import window
from relay_service.publisher import Outcomes, Publisher
from shared import backoff, metrics
from shared.db import outbox
from shared.errors import PermanentPublishError
from shared.event_waits import first_of
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# A lost database is retried at least this often, so the relay resumes soon
# after it returns and its liveness probe keeps seeing the loop turn.
DB_RETRY_MAX_S = 10.0


@dataclass
class BatchOutcome:
    """A batch's rows by outcome."""

    published: list[tuple[outbox.ClaimedMessage, str]] = field(default_factory=list)
    failures: list[outbox.PublishFailure] = field(default_factory=list)
    dead: list[tuple[outbox.ClaimedMessage, str]] = field(default_factory=list)


def sort_outcomes(
    batch: Sequence[outbox.ClaimedMessage], outcomes: Outcomes, settings: Settings
) -> BatchOutcome:
    """Published, failed for now (with each row's next backoff), or never publishable."""
    result = BatchOutcome()
    for message, error in zip(batch, outcomes, strict=True):
        if isinstance(error, str):
            result.published.append((message, error))
        elif isinstance(error, PermanentPublishError):
            result.dead.append((message, str(error)))
        else:
            retry_in_s = backoff.backoff_s(
                message.publish_attempts + 1,
                settings.relay_backoff_base_s,
                settings.relay_backoff_max_s,
            )
            result.failures.append(outbox.PublishFailure(message.id, str(error), retry_in_s))
    return result


class Relay:
    """Publishes committed outbox rows; safe to run in several processes at once."""

    def __init__(self, engine: AsyncEngine, publisher: Publisher, settings: Settings) -> None:
        self.engine = engine
        self.publisher = publisher
        self.settings = settings
        self.wakeup = asyncio.Event()
        self.last_beat = time.monotonic()
        # A client had more due rows than window at the last claim: its workers will make
        # room without anyone telling the relay, so it looks again after a short wait.
        self.window_full = False
        # The pace the workers take this relay's messages, and how many client lanes had a
        # backlog at the last claim: together they size each lane's window.
        self.publish_rate = window.PublishRate()
        self.client_lanes = 1
        self.window = settings.relay_client_window

    def wake(self) -> None:
        """Ask for a cycle soon (a wake-up hint arrived, or the poll interval passed)."""
        self.wakeup.set()

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def seconds_since_beat(self) -> float:
        """How long ago the loop last turned (the liveness probe's measure)."""
        return time.monotonic() - self.last_beat

    async def run_once(self, connection: AsyncConnection | None = None) -> int:
        """One batch in one transaction, on `connection` if given (else one from the pool);
        returns how many rows were claimed.

        A Core connection, not an ORM session: the session's bookkeeping cost 0.2 ms on the
        way from a commit to its message (docs/performance.md)."""
        if connection is None:
            async with self.engine.connect() as pooled:
                return await self.run_once(pooled)
        self.window = window.window_size(
            self.publish_rate.per_s(), self.client_lanes, self.settings
        )
        metrics.RELAY_CLIENT_WINDOW.set(self.window)
        async with connection.begin():
            claim = await outbox.claim_batch(
                connection, self.settings.relay_batch_size, self.window
            )
            self.window_full = claim.window_full
            self.client_lanes = claim.client_lanes
            batch = claim.messages
            if not batch:
                return 0
            started = time.monotonic()
            outcomes = await self.publisher.publish(batch)
            publish_s = time.monotonic() - started
            rows = sort_outcomes(batch, outcomes, self.settings)
            released = await self._record(connection, rows)
        self._observe(rows, publish_s)
        self.publish_rate.record(len(rows.published))
        log.info(
            "outbox_batch_published",
            claimed=len(batch),
            published=len(rows.published),
            failed=len(rows.failures),
            dead=len(rows.dead),
            released=released,
        )
        if rows.failures:
            log.warning(
                "outbox_publish_failed", count=len(rows.failures), error=rows.failures[0].error
            )
        return len(batch)

    async def _record(self, connection: AsyncConnection, rows: BatchOutcome) -> int:
        """Write each row's outcome; returns how many backing-off rows were made due."""
        for message, reason in rows.dead:
            log.error(
                "outbox_message_dead",
                message_id=str(message.message_id),
                task_id=str(message.task_id),
                error=reason,
            )
            await outbox.mark_dead(connection, message.id, reason)
        await outbox.record_publish_failures(connection, rows.failures)
        await outbox.mark_published(
            connection, [outbox.PublishedMessage(m.id, stored) for m, stored in rows.published]
        )
        # A row that had failed went out: the broker is back, so rows still
        # backing off from the outage need not wait out their backoff.
        if any(m.publish_attempts for m, _ in rows.published) and not rows.failures:
            return await outbox.release_backoff(connection)
        return 0

    def _observe(self, rows: BatchOutcome, publish_s: float) -> None:
        metrics.MESSAGES_PUBLISHED.inc(len(rows.published))
        for message, _stored in rows.published:
            metrics.COMMIT_TO_PUBLISH.observe(message.age_s + publish_s)
        if rows.failures:
            metrics.PUBLISH_FAILURES.labels(kind="transient").inc(len(rows.failures))
        if rows.dead:
            metrics.PUBLISH_FAILURES.labels(kind="permanent").inc(len(rows.dead))

    async def drain(
        self, stop: asyncio.Event | None = None, connection: AsyncConnection | None = None
    ) -> int:
        """Run batches until one finds nothing more to send now (a short batch, or a full
        window that yielded nothing), or `stop` is set. While workers keep taking a client's
        messages, each batch refills the room they made."""
        total = 0
        while True:
            claimed = await self.run_once(connection)
            self.beat()
            total += claimed
            more = claimed == self.settings.relay_batch_size or (claimed and self.window_full)
            if not more or (stop is not None and stop.is_set()):
                return total

    async def _pace(self, stop: asyncio.Event, cycle_started: float) -> None:
        """After a cycle that found rows, start the next no sooner than `relay_busy_gap_s`
        after it began: while creates keep coming, their hints (one per commit) are
        gathered into one claim, not a transaction each. An idle relay's next hint comes
        later than that and is not held back."""
        rest_s = self.settings.relay_busy_gap_s - (time.monotonic() - cycle_started)
        if rest_s > 0:
            await first_of(stop, timeout_s=rest_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Drain on every wake-up until `stop` is set; the batch in hand always completes.

        The loop keeps one connection between cycles: taking one from the pool cost 0.15 ms
        of each wake-up (docs/performance.md). After a database error it is given back and
        the loop backs off (at most `DB_RETRY_MAX_S`); errors never end the loop.
        """
        failures = 0
        fruitless_looks = 0
        connection: AsyncConnection | None = None
        try:
            while not stop.is_set():
                self.beat()
                self.wakeup.clear()
                cycle_started = time.monotonic()
                try:
                    if connection is None:
                        connection = await self.engine.connect()
                    claimed = await self.drain(stop, connection)
                    failures = 0
                except (SQLAlchemyError, OSError) as exc:
                    await _give_back(connection)
                    connection = None
                    failures += 1
                    delay_s = backoff.backoff_s(failures, 0.2, DB_RETRY_MAX_S)
                    log.warning("relay_cycle_failed", error=type(exc).__name__, retry_in_s=delay_s)
                    await first_of(stop, timeout_s=delay_s)
                    continue
                fruitless_looks = 0 if claimed or not self.window_full else fruitless_looks + 1
                recheck_s = window.recheck_s(self.window_full, fruitless_looks, self.settings)
                await first_of(stop, self.wakeup, timeout_s=recheck_s)
                if claimed:
                    await self._pace(stop, cycle_started)
        finally:
            await _give_back(connection)


async def _give_back(connection: AsyncConnection | None) -> None:
    """Return `connection` to the pool (a broken one is discarded there)."""
    if connection is not None:
        with contextlib.suppress(SQLAlchemyError, OSError):
            await connection.close()
