"""`python -m relay_service`: the relay, its listener, jobs and probes, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass

import redis.asyncio as aioredis
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from relay_service.deliverer import Deliverer
from relay_service.firing import Firing
from relay_service.leader import LeaderElection, MaintenanceJobs
from relay_service.listener import build_listener
from relay_service.probe_server import HealthServer, Readiness
from relay_service.publisher import DramatiqPublisher
from relay_service.relay import Relay
from relay_service.run_reports import RunReports
from relay_service.scheduler import build_scheduler, relay_jobs
from relay_service.whereabouts import BrokerWatch
from shared import gc_pauses, redis_clients, safeguards
from shared.db.engine import create_engine, create_sessionmaker
from shared.dramatiq_broker import create_broker
from shared.dramatiq_private import client_of
from shared.logging import configure_logging, get_logger
from shared.settings import Settings, get_settings

log = get_logger("relay_service")


async def _run_until_stopped(
    tasks: list[asyncio.Task[None]], stop: asyncio.Event, grace_s: float
) -> int:
    """Wait for `stop` (or a task dying), then give the tasks `grace_s` to finish their batch."""
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    crashed = [task for task in tasks if task in done and task.exception() is not None]
    for task in crashed:
        log.error("relay_task_crashed", error=repr(task.exception()))
    stop.set()
    stopping.cancel()
    _, late = await asyncio.wait(tasks, timeout=grace_s)
    for task in late:
        # Cancelling rolls the batch's transaction back: its rows stay unpublished.
        log.warning("relay_batch_abandoned")
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*late, return_exceptions=True)
    return 1 if crashed else 0


@dataclass
class Parts:
    engine: AsyncEngine
    broker: RedisBroker
    relay: Relay
    election: LeaderElection
    scheduler: AsyncIOScheduler
    health: HealthServer
    deliverer: Deliverer
    redis: aioredis.Redis


def build(settings: Settings, stop: asyncio.Event) -> Parts:
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    broker = create_broker(
        settings, middleware=[], socket_timeout_s=settings.relay_broker_timeout_s
    )
    relay = Relay(engine, DramatiqPublisher(broker), settings)
    election = LeaderElection(settings)
    watch = BrokerWatch(sessionmaker, broker, settings)
    jobs = MaintenanceJobs(sessionmaker, settings, election, stop, watch)
    health = HealthServer(settings, relay, Readiness(engine, broker))
    redis = safeguards.create_redis(settings)
    deliverer = Deliverer(sessionmaker, settings)
    firing = Firing(sessionmaker, redis, settings, stop, relay.wake)
    reports = RunReports(sessionmaker, stop, deliverer.wake)
    scheduler = build_scheduler(
        relay_jobs(settings, relay, jobs, deliverer, firing, reports), jobs.leads
    )
    return Parts(engine, broker, relay, election, scheduler, health, deliverer, redis)


def _loops(settings: Settings, parts: Parts, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    relay, deliverer = parts.relay, parts.deliverer
    tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(deliverer.run(stop))]
    if settings.wakeup_hints:
        listener = build_listener(settings, relay.wake, deliverer.wake)
        tasks.append(asyncio.create_task(listener.run(stop)))
    return tasks


async def _close(parts: Parts) -> None:
    if parts.scheduler.running:
        parts.scheduler.shutdown(wait=False)
    await parts.election.release()
    await parts.health.close()
    client_of(parts.broker).connection_pool.disconnect()
    await redis_clients.aclose(parts.redis)
    await parts.engine.dispose()


async def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; the exit code (0 after a clean stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    parts = build(settings, stop)
    gc_pauses.freeze_startup_objects()
    try:
        if settings.relay_health_port:
            try:
                await parts.health.start()
            except OSError as exc:
                log.error("relay_probe_port_unavailable", error=str(exc))
                return 1
        parts.scheduler.start()
        tasks = _loops(settings, parts, stop)
        log.info("relay_started", batch_size=settings.relay_batch_size)
        return await _run_until_stopped(tasks, stop, settings.relay_shutdown_timeout_s)
    finally:
        await _close(parts)
        log.info("relay_stopped")


SESSION_URL_MISSING = (
    "relay: DATABASE_POOL_MODE=transaction needs DATABASE_DIRECT_URL: the leader's advisory "
    "lock and LISTEN live in a server session, which a transaction pooler does not keep"
)


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    if not settings.has_session_url:
        print(SESSION_URL_MISSING, file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
