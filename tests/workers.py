"""Builders for in-process worker tests: runtimes, controllable scanners, committed tasks."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import safeguards
from shared.db import claims, completions, tasks
from shared.db.completions import Completion
from shared.db.engine import create_engine, create_sessionmaker
from shared.db.models import OutboxMessage, Task, TaskStatus
from shared.messages import scan_entry
from shared.settings import Settings
from tests.helpers import make_user
from worker_service.runtime import Scanner, WorkerRuntime

DEADLINE_S = 10.0
# A live limit no test reaches: `claim_one` claims whatever else runs on the target.
NO_LIVE_LIMIT = 1_000_000


def worker_settings(settings: Settings, **overrides: Any) -> Settings:
    """Settings for in-process workers: an existence check that gives up quickly."""
    values: dict[str, Any] = {"existence_check_delay_s": 0.01, "existence_check_attempts": 3}
    values.update(overrides)
    return settings.model_copy(update=values)


def new_runtime(settings: Settings, scanner: Scanner, owner: str) -> WorkerRuntime:
    """A worker with its own engine and Redis client, like a separate process."""
    engine = create_engine(settings)
    return WorkerRuntime(
        settings,
        engine,
        create_sessionmaker(engine),
        scanner,
        safeguards.create_redis(settings),
        owner=owner,
    )


async def close_runtime(runtime: WorkerRuntime) -> None:
    await runtime.redis.aclose()
    await runtime.engine.dispose()


class GatedScanner:
    """Records each scan; a scan waits for `release` (if given), then returns or raises."""

    def __init__(self, *, gated: bool = False, error: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.running = 0
        self.cancelled = 0
        self.release = asyncio.Event()
        if not gated:
            self.release.set()
        self.error = error

    async def __call__(
        self, domain: str, config: dict[str, Any], settings: Settings
    ) -> dict[str, Any]:
        self.calls.append(domain)
        self.running += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        if self.error is not None:
            raise self.error
        return {"domain": domain, "ok": True}


async def committed_task(
    sessionmaker: async_sessionmaker[AsyncSession],
    domain: str = "example.com",
    max_attempts: int = 3,
) -> uuid.UUID:
    user, _ = await make_user(sessionmaker, f"u{uuid.uuid4().hex[:8]}")
    task_id = uuid.uuid4()
    new = tasks.NewTask(user_id=user.id, target_domain=domain, config={}, max_attempts=max_attempts)
    async with sessionmaker() as session, session.begin():
        await tasks.insert_task_with_message(session, task_id, new, scan_entry(task_id, "scans"))
    return task_id


async def claim_one(
    session: AsyncSession, task_id: uuid.UUID, owner: str, lease_s: float
) -> uuid.UUID:
    """The worker's claim of one task, whatever else runs on its target; its lease token."""
    claimed = await claims.claim_tasks(session, [task_id], NO_LIVE_LIMIT, owner, lease_s)
    assert task_id in claimed, "the task was not claimable"
    return claimed[task_id][1]


async def finish_one(
    session: AsyncSession,
    task_id: uuid.UUID,
    lease_token: uuid.UUID,
    status: TaskStatus,
    result: dict[str, Any] | None,
    error: str | None,
) -> bool:
    """The worker's final write of one run: True if `lease_token` still held the lease."""
    end = Completion(task_id, lease_token, status, result, error)
    return task_id in await completions.finish_tasks(session, [end])


async def load(sessionmaker: async_sessionmaker[AsyncSession], task_id: uuid.UUID) -> Task:
    async with sessionmaker() as session:
        return (await session.execute(select(Task).where(Task.id == task_id))).scalar_one()


async def outbox_of(
    sessionmaker: async_sessionmaker[AsyncSession], task_id: uuid.UUID
) -> list[OutboxMessage]:
    async with sessionmaker() as session:
        stmt = select(OutboxMessage).where(OutboxMessage.task_id == task_id)
        return list((await session.execute(stmt.order_by(OutboxMessage.id))).scalars().all())
