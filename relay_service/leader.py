"""Leader election among relays and the bodies of the maintenance jobs only the leader runs.

The work itself lives in `shared.maintenance_jobs` (scanctl runs the same code); the
relay's registry (`relay_service.scheduler`) says when each job runs and skips those for
the leader on any other relay; this module elects the leader and turns counts into metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from relay_service.whereabouts import BROKER_ERRORS, BrokerWatch
from shared import keys, maintenance_jobs, metrics
from shared.db import housekeeping, inspection
from shared.db.engine import ms_setting, server_limits
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# How each relay's election connection shows in pg_stat_activity (leader or not).
APPLICATION_NAME = keys.RELAY_ELECTION_APPLICATION_NAME
# Bounds every statement on the leader connection, so a hung database cannot
# wedge the election job.
LEADER_COMMAND_TIMEOUT_S = 10.0
# The leader's connection sits idle between checks; one idle this many check intervals
# (a frozen or partitioned leader) is ended by the server, which releases the lock.
LEADER_IDLE_CHECKS = 3
# Pruning runs in chunks of this many batches, checking for shutdown in between.
PRUNE_CHUNK_BATCHES = 20
# Client lanes exported as gauges, longest backlog first: the label set stays small.
CLIENT_GAUGES = 50


class LeaderElection:
    """Holds a PostgreSQL session-level advisory lock on a dedicated connection.

    Whoever holds the lock leads. If the leader dies, its connection ends and
    PostgreSQL releases the lock; the next `check` by another relay takes it. A leader that
    is alive but stuck (frozen, partitioned) loses it too: the server ends a session idle
    for `LEADER_IDLE_CHECKS` check intervals, and TCP keepalives end one whose peer is gone.
    The lock lives in the server session, so this connection goes to DATABASE_DIRECT_URL
    (direct or session-pooled), never through a transaction pooler.
    """

    def __init__(self, settings: Settings, lock_key: int = keys.RELAY_LEADER_LOCK) -> None:
        self.lock_key = lock_key
        self.engine = create_async_engine(
            settings.direct_sqlalchemy_url,
            poolclass=NullPool,
            connect_args={
                "server_settings": server_limits(
                    settings,
                    application_name=APPLICATION_NAME,
                    idle_session_timeout=ms_setting(
                        LEADER_IDLE_CHECKS * settings.relay_leader_check_interval_s
                    ),
                ),
                "command_timeout": LEADER_COMMAND_TIMEOUT_S,
            },
        )
        self.connection: AsyncConnection | None = None
        self.is_leader = False

    async def check(self) -> bool:
        """Take the lead if it is free, or confirm we still hold it; False on any error."""
        try:
            if self.connection is None:
                self.connection = await self.engine.connect()
            if self.is_leader:
                held = await housekeeping.holds_advisory_lock(self.connection, self.lock_key)
            else:
                held = await housekeeping.try_advisory_lock(self.connection, self.lock_key)
            # The lock outlives the transaction; an open one would pin a snapshot
            # and hold back vacuum of the outbox.
            await self.connection.commit()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("relay_leader_check_failed", error=type(exc).__name__)
            held = False
            await self._drop_connection()
        self._set(held)
        return held

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            log.info("relay_leader_gained" if leader else "relay_leader_lost")
        self.is_leader = leader
        metrics.RELAY_LEADER.set(1 if leader else 0)

    async def _drop_connection(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await connection.invalidate()
                await connection.close()

    async def release(self) -> None:
        """Step down now (on shutdown), so another relay need not wait for this one to die."""
        if self.connection is not None and self.is_leader:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await housekeeping.advisory_unlock(self.connection, self.lock_key)
                await self.connection.commit()
        if self.connection is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await self.connection.close()
        self.connection = None
        self._set(False)
        await self.engine.dispose()


# eq=False: a live part, not a value: equal only to itself, and hashable.
@dataclass(eq=False)
class MaintenanceJobs:
    """The leader check (every relay) and the leader's jobs, each one `run_once` of the
    relay's registry, which runs the leader's only while `leads()`."""

    sessionmaker: async_sessionmaker[AsyncSession]
    settings: Settings
    election: LeaderElection
    stop: asyncio.Event
    watch: BrokerWatch | None = None

    def leads(self) -> bool:
        return self.election.is_leader

    async def check_leader(self) -> None:
        was_leader = self.election.is_leader
        leads = await self.election.check()
        if leads and not was_leader and self.watch is not None:
            # A new leader has not watched the broker: its first walk checks every queued task.
            self.watch.full_walk = True
        if not leads and was_leader:
            # Only the leader reports the backlog: max() over relays stays right.
            _reset_gauges()

    async def check_broker(self) -> None:
        if self.watch is None or self.stop.is_set():
            return
        try:
            counts = await self.watch.check()
        except (SQLAlchemyError, *BROKER_ERRORS) as exc:
            log.warning("maintenance_failed", job="broker_check", error=type(exc).__name__)
            return
        metrics.TASKS_REDISPATCHED.labels(reason="broker_reset").inc(counts.broker_reset)
        metrics.TASKS_REDISPATCHED.labels(reason="message_lost").inc(counts.message_lost)

    async def redispatch(self) -> None:
        if self.stop.is_set():
            return
        try:
            counts = await maintenance_jobs.redispatch_orphans(self.sessionmaker, self.settings)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("maintenance_failed", job="redispatch", error=type(exc).__name__)
            return
        for reason in maintenance_jobs.OrphanReason:
            metrics.TASKS_REDISPATCHED.labels(reason=reason).inc(counts[reason])
        if any(counts.values()):
            log.info("tasks_redispatched", **counts)

    async def prune(self) -> None:
        chunk_rows = PRUNE_CHUNK_BATCHES * self.settings.relay_prune_batch_size
        total = 0
        # Leadership is checked again between chunks: a relay that lost it stops.
        while self.election.is_leader and not self.stop.is_set():
            try:
                counts = await maintenance_jobs.prune_published(
                    self.sessionmaker, self.settings, max_batches=PRUNE_CHUNK_BATCHES
                )
            except (SQLAlchemyError, OSError) as exc:
                log.warning("maintenance_failed", job="prune", error=type(exc).__name__)
                break
            pruned = counts["outbox_pruned"]
            metrics.OUTBOX_PRUNED.inc(pruned)
            total += pruned
            if pruned < chunk_rows:
                break
        if total:
            log.info("outbox_pruned", rows=total)

    async def refresh_gauges(self) -> None:
        try:
            async with self.sessionmaker() as session:
                summary = await inspection.summarize_outbox(session)
                clients = await inspection.client_dispatch(session, CLIENT_GAUGES)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("maintenance_failed", job="gauges", error=type(exc).__name__)
            return
        _set_client_gauges(clients)
        metrics.OUTBOX_BACKLOG.set(summary.backlog)
        metrics.OUTBOX_OLDEST_AGE.set(summary.oldest_unpublished_age_s or 0.0)
        metrics.OUTBOX_DEAD.set(summary.dead)


def _set_client_gauges(clients: list[inspection.ClientDispatch]) -> None:
    """Only the listed client lanes keep a series: a client whose backlog ended drops out."""
    metrics.CLIENT_BACKLOG.clear()
    metrics.CLIENT_IN_BROKER.clear()
    for client in clients:
        metrics.CLIENT_BACKLOG.labels(client.client, client.lane).set(client.backlog)
        metrics.CLIENT_IN_BROKER.labels(client.client, client.lane).set(client.in_broker)


def _reset_gauges() -> None:
    for gauge in (metrics.OUTBOX_BACKLOG, metrics.OUTBOX_OLDEST_AGE, metrics.OUTBOX_DEAD):
        gauge.set(0)
    _set_client_gauges([])
