"""Schedules written straight to the database, for the firing tests."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Schedule, ScheduleRun


async def add_schedule(
    sessionmaker: async_sessionmaker[AsyncSession],
    user_id: int,
    *,
    next_fire_at: datetime,
    anchor_at: datetime,
    interval_s: int | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
    domains: tuple[str, ...] = ("a.example.com",),
    missed: str = "run_once",
    **extra: Any,
) -> uuid.UUID:
    schedule_id = uuid.uuid4()
    async with sessionmaker() as session, session.begin():
        session.add(
            Schedule(
                id=schedule_id,
                user_id=user_id,
                cron=cron,
                timezone=timezone,
                interval_s=interval_s,
                anchor_at=anchor_at,
                domains=list(domains),
                config={"keywords": [], "regexes": []},
                missed=missed,
                next_fire_at=next_fire_at,
                **extra,
            )
        )
    return schedule_id


async def runs_of(
    sessionmaker: async_sessionmaker[AsyncSession], schedule_id: uuid.UUID
) -> list[ScheduleRun]:
    async with sessionmaker() as session:
        stmt = (
            select(ScheduleRun)
            .where(ScheduleRun.schedule_id == schedule_id)
            .order_by(ScheduleRun.tick_at)
        )
        return list((await session.execute(stmt)).scalars().all())


async def schedule_row(
    sessionmaker: async_sessionmaker[AsyncSession], schedule_id: uuid.UUID
) -> Schedule:
    async with sessionmaker() as session:
        row = await session.get(Schedule, schedule_id)
        assert row is not None
        return row
