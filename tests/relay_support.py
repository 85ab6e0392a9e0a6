"""Builders for the relay's tests: committed tasks, outbox facts, broker contents."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import keys
from shared.db import outbox, tasks
from shared.db.models import OutboxMessage, Task
from shared.messages import scan_entry
from tests.helpers import make_user

QUEUE = "scans"


async def create_tasks(
    sessionmaker: async_sessionmaker[AsyncSession],
    count: int,
    *,
    user_name: str | None = None,
    per_commit: int = 500,
    max_attempts: int = 3,
) -> list[uuid.UUID]:
    """`count` pending tasks with their outbox rows, committed `per_commit` at a time."""
    user, _ = await make_user(sessionmaker, user_name or f"u{uuid.uuid4().hex[:8]}")
    ids: list[uuid.UUID] = []
    while len(ids) < count:
        async with sessionmaker() as session, session.begin():
            for _ in range(min(per_commit, count - len(ids))):
                task_id = uuid.uuid4()
                new = tasks.NewTask(
                    user_id=user.id,
                    target_domain=f"t{len(ids)}.example.com",
                    config={},
                    max_attempts=max_attempts,
                )
                await tasks.insert_task_with_message(
                    session, task_id, new, scan_entry(task_id, QUEUE)
                )
                ids.append(task_id)
    return ids


async def outbox_rows(sessionmaker: async_sessionmaker[AsyncSession]) -> list[OutboxMessage]:
    async with sessionmaker() as session:
        stmt = select(OutboxMessage).order_by(OutboxMessage.id)
        return list((await session.execute(stmt)).scalars().all())


async def unpublished_count(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        stmt = (
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.published_at.is_(None), OutboxMessage.dead_at.is_(None))
        )
        return int((await session.execute(stmt)).scalar_one())


async def task_states(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> dict[uuid.UUID, tuple[str, int, str | None]]:
    """Each task's (status, attempts, error)."""
    async with sessionmaker() as session:
        stmt = select(Task.id, Task.status, Task.attempts, Task.error)
        rows = (await session.execute(stmt)).all()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


async def terminate_backends(
    sessionmaker: async_sessionmaker[AsyncSession], application_name: str
) -> int:
    """End every server session of `application_name`, as a crash or failover would."""
    stmt = text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = :name AND pid <> pg_backend_pid()"
    )
    async with sessionmaker() as session:
        return int((await session.execute(stmt, {"name": application_name})).scalar_one())


def broker_messages(client: redis.Redis, queue: str = QUEUE) -> list[dict[str, Any]]:
    """The messages Dramatiq holds for `queue`, decoded from its own storage."""
    stored = client.hgetall(f"{keys.broker_queue_key(queue)}.msgs")
    return [json.loads(raw) for raw in stored.values()]


async def insert_bare_messages(sessionmaker: async_sessionmaker[AsyncSession], count: int) -> None:
    """`count` outbox rows without tasks, in one statement: a backlog built fast."""
    stmt = text(
        """
        INSERT INTO outbox (message_id, actor, queue, payload)
        SELECT gen_random_uuid(), :actor, :queue, jsonb_build_object('task_id', g::text)
        FROM generate_series(1, :count) g
        """
    )
    async with sessionmaker() as session, session.begin():
        await session.execute(stmt, {"actor": keys.SCAN_ACTOR, "queue": QUEUE, "count": count})


async def claimable_count(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Due, unpublished rows no relay holds right now."""
    async with sessionmaker() as session:
        # Closing the session rolls the claim back.
        claim = await outbox.claim_batch(session, 1_000_000, window=1_000_000)
        return len(claim.messages)
