"""The waiter registry and the wait loop, without a database: notifications wake exactly
the waiters of their task or batch, the bound holds, a wake is never lost."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from api_service.waiting import FinishWaiters, wait_until
from shared.errors import TooManyClientWaiters, TooManyWaiters


def registry(max_waiters: int = 10) -> FinishWaiters:
    return FinishWaiters(None, max_waiters, 1.0)


async def test_a_notification_wakes_the_waiters_of_its_task_and_of_its_batch_only() -> None:
    waiters = registry()
    task, batch, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with (
        waiters.watch(task) as on_task,
        waiters.watch(batch) as on_batch,
        waiters.watch(other) as on_other,
    ):
        waiters.hinted(f"{task},{batch}")
        assert (on_task.is_set(), on_batch.is_set(), on_other.is_set()) == (True, True, False)
    assert waiters.count == 0


async def test_a_payload_without_a_batch_or_garbled_wakes_nobody_else() -> None:
    waiters = registry()
    task = uuid.uuid4()
    async with waiters.watch(task) as event:
        waiters.hinted("not-a-uuid,")
        assert not event.is_set()
        waiters.hinted(f"{task},")
        assert event.is_set()


async def test_over_the_bound_watching_raises_too_many_waiters_naming_wait() -> None:
    waiters = registry(max_waiters=1)
    async with waiters.watch(uuid.uuid4()):
        with pytest.raises(TooManyWaiters) as refused:
            async with waiters.watch(uuid.uuid4()):
                pass
    assert refused.value.field == "wait"
    assert refused.value.status_code == 503
    async with waiters.watch(uuid.uuid4()):
        assert waiters.count == 1


async def test_a_client_over_its_share_gets_429_naming_its_soonest_wait_and_others_get_in() -> None:
    waiters = FinishWaiters(None, 10, 1.0, max_client_waiters=2)
    now = time.monotonic()
    async with (
        waiters.watch(uuid.uuid4(), "alice", now + 30),
        waiters.watch(uuid.uuid4(), "alice", now + 7.5),
    ):
        with pytest.raises(TooManyClientWaiters) as refused:
            async with waiters.watch(uuid.uuid4(), "alice", now + 30):
                pass
        async with waiters.watch(uuid.uuid4(), "bob", now + 30):
            assert waiters.count == 3
    assert (refused.value.status_code, refused.value.field) == (429, "wait")
    # The soonest of her waits (7.5 s), not the other (30 s).
    assert 1 <= refused.value.retry_after_s <= 8
    async with waiters.watch(uuid.uuid4(), "alice", now + 30):
        assert waiters.count == 1


async def test_a_full_process_refuses_with_503_before_any_share_counts() -> None:
    waiters = FinishWaiters(None, 1, 1.0, max_client_waiters=1)
    async with waiters.watch(uuid.uuid4(), "alice"):
        with pytest.raises(TooManyWaiters) as refused:
            async with waiters.watch(uuid.uuid4(), "alice"):
                pass
    assert refused.value.status_code == 503


async def test_wait_until_reads_again_on_each_wake_until_ended() -> None:
    waiters = registry()
    key = uuid.uuid4()
    states = iter(["pending", "pending", "running", "succeeded"])
    reads: list[str] = []

    async def read() -> str:
        reads.append(next(states))
        return reads[-1]

    waiting = asyncio.create_task(wait_until(waiters, key, 600, read, lambda s: s == "succeeded"))
    # Each turn of the loop lets the waiter read once and wait again; then it is woken.
    for _ in range(100):
        await asyncio.sleep(0)
        if waiting.done():
            break
        waiters.hinted(f"{key},")

    assert await waiting == "succeeded"
    assert reads == ["pending", "pending", "running", "succeeded"]


async def test_without_a_wait_or_when_already_ended_it_reads_once_and_never_registers() -> None:
    waiters = registry(max_waiters=0)
    calls = 0

    async def read() -> str:
        nonlocal calls
        calls += 1
        return "pending"

    assert await wait_until(waiters, uuid.uuid4(), 0, read, lambda s: False) == "pending"
    assert await wait_until(waiters, uuid.uuid4(), 5, read, lambda s: True) == "pending"
    assert calls == 2
