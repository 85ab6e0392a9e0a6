"""Claims that start together, taken in one transaction: each with a token of its own, within
the politeness limit counting the batch's own claims, and whatever the batch cannot take left
to the single claim untouched; against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import safeguards
from shared.db import claims
from shared.db.claims import Claim
from shared.db.models import TaskStatus
from shared.settings import Settings
from tests.workers import GatedScanner, claim_one, committed_task, load, worker_settings
from worker_service.claimer import SECOND_LOOK_MIN_BATCH, Claimer
from worker_service.lifecycle import claimer_of
from worker_service.runtime import WorkerRuntime


@pytest.fixture
async def batcher(
    settings: Settings, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Claimer]:
    """The claimer a worker process builds, claiming for `batch-worker`."""
    tuned = worker_settings(settings, per_target_concurrency=2, target_lock_timeout_s=0.3)
    redis = safeguards.create_redis(tuned)
    runtime = WorkerRuntime(tuned, engine, sessionmaker, GatedScanner(), redis, "batch-worker")
    yield claimer_of(runtime)
    await redis.aclose()


async def claim_together(batcher: Claimer, task_ids: list[uuid.UUID]) -> list[Claim | None]:
    return list(await asyncio.gather(*(batcher.claim(task_id) for task_id in task_ids)))


async def test_claims_that_start_together_are_taken_in_one_transaction(
    batcher: Claimer, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    task_ids = [await committed_task(sessionmaker, f"t{index}.example") for index in range(12)]

    answers = await claim_together(batcher, task_ids)

    assert all(answer is not None for answer in answers)
    rows = [await load(sessionmaker, task_id) for task_id in task_ids]
    tokens = {answer[1] for answer in answers if answer is not None}
    assert tokens == {row.lease_token for row in rows}
    assert len(tokens) == len(task_ids)
    for row, answer in zip(rows, answers, strict=True):
        assert answer is not None
        assert answer[0].id == row.id
        assert (row.status, row.attempts, row.lease_owner) == (
            TaskStatus.RUNNING,
            1,
            "batch-worker",
        )
        assert row.lease_expires_at is not None
        assert row.lease_expires_at > row.started_at
    # now() is the transaction's start: one transaction claimed them all.
    assert len({row.started_at for row in rows}) == 1


async def test_a_batch_counts_its_own_claims_of_a_domain_against_the_limit(
    batcher: Claimer, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    live = await committed_task(sessionmaker, "busy.example")
    async with sessionmaker() as session, session.begin():
        await claim_one(session, live, "elsewhere", 30)
    busy = [await committed_task(sessionmaker, "busy.example") for _ in range(3)]
    calm = [await committed_task(sessionmaker, "calm.example") for _ in range(3)]

    answers = await claim_together(batcher, busy + calm)

    # Limit 2: one live scan elsewhere leaves room for one of busy's; calm takes two of three.
    claimed = [answer is not None for answer in answers]
    assert sum(claimed[:3]) == 1
    assert sum(claimed[3:]) == 2
    for task_id, taken in zip(busy + calm, claimed, strict=True):
        row = await load(sessionmaker, task_id)
        # Left alone means untouched: the single claim decides what happens to it.
        expected = (TaskStatus.RUNNING, 1) if taken else (TaskStatus.PENDING, 0)
        assert (row.status, row.attempts) == expected


async def test_what_a_batch_cannot_claim_is_left_to_the_single_claim(
    batcher: Claimer, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    unknown = uuid.uuid4()  # not committed (yet)
    exhausted = await committed_task(sessionmaker, "spent.example", max_attempts=1)
    running = await committed_task(sessionmaker, "taken.example")
    async with sessionmaker() as session, session.begin():
        await session.execute(
            text("UPDATE tasks SET attempts = 1 WHERE id = :id"), {"id": exhausted}
        )
        await claim_one(session, running, "other", 30)
    fresh = await committed_task(sessionmaker, "fresh.example")

    answers = await claim_together(batcher, [unknown, exhausted, running, fresh])

    assert [answer is None for answer in answers] == [True, True, True, False]
    assert (await load(sessionmaker, exhausted)).status == TaskStatus.PENDING
    assert (await load(sessionmaker, running)).lease_owner == "other"


async def test_a_message_met_twice_in_one_batch_is_claimed_once(
    batcher: Claimer, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    task_id = await committed_task(sessionmaker, "twice.example")

    answers = await claim_together(batcher, [task_id, task_id])

    assert sorted(answer is None for answer in answers) == [False, True]
    assert (await load(sessionmaker, task_id)).attempts == 1


async def test_a_batch_that_waits_too_long_for_a_target_lock_claims_nothing(
    batcher: Claimer, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    stalled = await committed_task(sessionmaker, "stalled.example")
    other = await committed_task(sessionmaker, "other.example")
    async with sessionmaker() as holder, holder.begin():
        # A claim of the same target that stalls under its lock.
        await claims.lock_targets(holder, [stalled], 5)

        answers = await claim_together(batcher, [other, stalled])

    assert answers == [None, None]
    for task_id in (stalled, other):
        assert (await load(sessionmaker, task_id)).status == TaskStatus.PENDING


async def test_a_batch_leaves_a_row_another_transaction_holds_without_waiting_for_it(
    batcher: Claimer, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    held = await committed_task(sessionmaker, "held.example")
    free = await committed_task(sessionmaker, "free.example")
    async with sessionmaker() as relay, relay.begin():
        # What a relay marking its batch `queued` holds until it commits.
        await relay.execute(text("SELECT 1 FROM tasks WHERE id = :id FOR UPDATE"), {"id": held})

        # The holder is still open: a batch that waited for the row would never return.
        batch = claim_together(batcher, [held, free])
        answers = await asyncio.wait_for(batch, 10)

    assert [answer is None for answer in answers] == [True, False]
    assert (await load(sessionmaker, held)).status == TaskStatus.PENDING


async def test_a_row_held_until_a_moment_after_a_busy_batch_is_taken_at_the_second_look(
    batcher: Claimer, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    held = await committed_task(sessionmaker, "relayed.example")
    others = [
        await committed_task(sessionmaker, f"busy{index}.example")
        for index in range(SECOND_LOOK_MIN_BATCH - 1)
    ]
    # Time enough for the commit below on a busy machine.
    batcher.second_look_s = 1.0
    async with sessionmaker() as relay:
        async with relay.begin():
            # A relay that published the task's message and has not committed its mark yet.
            await relay.execute(text("SELECT 1 FROM tasks WHERE id = :id FOR UPDATE"), {"id": held})
            answers = asyncio.ensure_future(claim_together(batcher, [held, *others]))
            deadline = asyncio.get_running_loop().time() + 10
            while not batcher.looking_again:
                assert asyncio.get_running_loop().time() < deadline, "no second look was set"
                await asyncio.sleep(0.001)
        # The relay commits before the second look.

        claims_made = await asyncio.wait_for(answers, 10)

    assert all(claim is not None for claim in claims_made)
    claim = claims_made[0]
    assert claim is not None
    row = await load(sessionmaker, held)
    assert (row.status, row.lease_token) == (TaskStatus.RUNNING, claim[1])


async def test_what_a_lone_claim_leaves_goes_to_the_single_claim_at_once(
    batcher: Claimer, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    held = await committed_task(sessionmaker, "idle.example")
    batcher.second_look_s = 60.0
    async with sessionmaker() as relay, relay.begin():
        await relay.execute(text("SELECT 1 FROM tasks WHERE id = :id FOR UPDATE"), {"id": held})

        # An idle worker's claim: no second look to wait for, the single claim waits for the row.
        answer = await asyncio.wait_for(batcher.claim(held), 10)

    assert answer is None
    assert not batcher.looking_again
