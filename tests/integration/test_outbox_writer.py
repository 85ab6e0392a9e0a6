"""The one outbox writer (`outbox.insert_entries_sql`): every path that starts a scan writes
its rows through it, one per task it changed, in the task's client and lane."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import batches, outbox, tasks
from shared.db.models import Lane, OutboxMessage, Task, TaskStatus
from shared.messages import scan_entry
from tests.helpers import make_user

QUEUE = "scans"


async def rows_by_task(session: AsyncSession) -> dict[uuid.UUID | None, list[OutboxMessage]]:
    found: dict[uuid.UUID | None, list[OutboxMessage]] = {}
    for row in (await session.execute(select(OutboxMessage).order_by(OutboxMessage.id))).scalars():
        found.setdefault(row.task_id, []).append(row)
    return found


def new_task(user_id: int, key: str | None = None) -> tasks.NewTask:
    return tasks.NewTask(
        user_id=user_id, target_domain="example.com", config={}, max_attempts=3, idempotency_key=key
    )


async def test_a_create_writes_one_interactive_row_and_a_conflicting_create_writes_none(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    first, second = uuid.uuid4(), uuid.uuid4()
    entry = scan_entry(first, QUEUE, "req-1")
    async with sessionmaker() as session, session.begin():
        assert await tasks.insert_task_with_message(session, first, new_task(user.id, "k"), entry)
        conflicting = scan_entry(second, QUEUE)
        assert not await tasks.insert_task_with_message(
            session, second, new_task(user.id, "k"), conflicting
        )
    async with sessionmaker() as session:
        found = await rows_by_task(session)
    assert list(found) == [first]
    [row] = found[first]
    assert (row.message_id, row.actor, row.queue) == (entry.message_id, entry.actor, QUEUE)
    assert row.payload == {"task_id": str(first), "request_id": "req-1"}
    assert (row.user_id, row.lane) == (user.id, Lane.INTERACTIVE)


async def test_a_batch_writes_one_batch_lane_row_per_task_in_one_statement(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    task_ids = [uuid.uuid4() for _ in range(3)]
    new = batches.NewBatch(
        id=uuid.uuid4(),
        user_id=user.id,
        config={},
        max_attempts=3,
        request_hash="h",
        idempotency_key=None,
        domains=[f"d{index}.example.com" for index in range(3)],
        entries=[scan_entry(task_id, QUEUE) for task_id in task_ids],
    )
    async with sessionmaker() as session, session.begin():
        assert await batches.insert_batch(session, new)
    async with sessionmaker() as session:
        found = await rows_by_task(session)
    assert sorted(found, key=str) == sorted(task_ids, key=str)
    for task_id, entry in zip(task_ids, new.entries, strict=True):
        [row] = found[task_id]
        assert row.message_id == entry.message_id
        assert (row.user_id, row.lane) == (user.id, Lane.BATCH)


async def test_a_retry_writes_a_row_only_when_the_task_could_be_retried(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    task_id = uuid.uuid4()
    async with sessionmaker() as session, session.begin():
        await tasks.insert_task_with_message(
            session, task_id, new_task(user.id), scan_entry(task_id, QUEUE)
        )
    async with sessionmaker() as session, session.begin():
        # Still pending: not retryable, so no second row.
        assert await tasks.retry_task(session, None, task_id, scan_entry(task_id, QUEUE)) is None
        task = await session.get(Task, task_id)
        assert task is not None
        task.status = TaskStatus.FAILED.value
    again = scan_entry(task_id, QUEUE)
    async with sessionmaker() as session, session.begin():
        assert await tasks.retry_task(session, user.id, task_id, again) is not None
    async with sessionmaker() as session:
        rows = (await rows_by_task(session))[task_id]
    assert [row.message_id for row in rows][1:] == [again.message_id]
    assert len(rows) == 2


async def test_messages_for_existing_tasks_skip_an_unknown_task(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    known = [uuid.uuid4(), uuid.uuid4()]
    async with sessionmaker() as session, session.begin():
        for task_id in known:
            await tasks.insert_task_with_message(
                session, task_id, new_task(user.id), scan_entry(task_id, QUEUE)
            )
    entries = [scan_entry(task_id, QUEUE) for task_id in [*known, uuid.uuid4()]]
    async with sessionmaker() as session, session.begin():
        await outbox.insert_messages(session, entries)
    async with sessionmaker() as session:
        found = await rows_by_task(session)
    assert sorted(found, key=str) == sorted(known, key=str)
    for task_id, entry in zip(known, entries[:2], strict=True):
        assert [row.message_id for row in found[task_id]][1:] == [entry.message_id]
