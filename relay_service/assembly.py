"""Everything a relay runs beside its claim loop: probes, deliverer, hint listener, leader
election, schedules and the periodic jobs.

Kept out of `relay_service.__main__`'s imports: the relay starts claiming first and loads
this (httpx, dnspython, APScheduler, uvicorn and Starlette among its imports) while the first
batch is on its way, so a relay restarted in front of a backlog publishes before it is done
importing what only its side jobs need.
"""

from __future__ import annotations

import asyncio
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
from relay_service.relay import Relay
from relay_service.run_reports import RunReports
from relay_service.scheduler import build_scheduler, relay_jobs
from relay_service.whereabouts import BrokerWatch
from shared import redis_clients, safeguards
from shared.db.engine import create_sessionmaker
from shared.settings import Settings


@dataclass
class Companions:
    election: LeaderElection
    scheduler: AsyncIOScheduler
    health: HealthServer
    deliverer: Deliverer
    redis: aioredis.Redis


def build(
    settings: Settings, stop: asyncio.Event, engine: AsyncEngine, broker: RedisBroker, relay: Relay
) -> Companions:
    sessionmaker = create_sessionmaker(engine)
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
    return Companions(election, scheduler, health, deliverer, redis)


def start_loops(
    settings: Settings, parts: Companions, relay: Relay, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """Start the scheduler, the deliverer and (with hints on) the hint listener."""
    parts.scheduler.start()
    tasks = [asyncio.create_task(parts.deliverer.run(stop))]
    if settings.wakeup_hints:
        listener = build_listener(settings, relay.wake, parts.deliverer.wake)
        tasks.append(asyncio.create_task(listener.run(stop)))
    return tasks


async def close(parts: Companions) -> None:
    if parts.scheduler.running:
        parts.scheduler.shutdown(wait=False)
    await parts.election.release()
    await parts.health.close()
    await redis_clients.aclose(parts.redis)
