"""The coroutine worker on a real Redis broker: its concurrency limit, its bounded prefetch, and
a graceful stop that finishes or hands back every message."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO
from redis.exceptions import ResponseError

from shared.embedded import EmbeddedUrls
from tests.helpers import wait_until
from worker_service import acks
from worker_service.async_worker import AsyncWorker, current_message

DEADLINE_S = 20.0
# A short idle poll keeps the test quick; the behaviour does not depend on it.
POLL_MS = 20


@dataclass
class Probe:
    """What the test actor saw: how many ran at once, which finished, and a gate to hold them."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: int = 0
    most_running: int = 0
    finished: list[str] = field(default_factory=list)
    message_ids: set[str] = field(default_factory=set)

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)

    def leave(self, name: str) -> None:
        with self.lock:
            self.running -= 1
            self.finished.append(name)


@dataclass
class Rig:
    broker: RedisBroker
    client: redis.Redis
    probe: Probe
    queue: str
    actor: dramatiq.Actor[..., object]

    def queued(self) -> int:
        """Message ids waiting in the queue's list (not fetched by any worker)."""
        return int(self.client.llen(f"dramatiq:{self.queue}"))

    def fetched_unacked(self) -> int:
        """Messages fetched by a worker and not yet acked, over every worker's ack set."""
        return sum(
            int(self.client.scard(key))
            for key in self.client.scan_iter(f"dramatiq:__acks__.*.{self.queue}")
        )

    def release(self, worker: AsyncWorker) -> None:
        """Let every held run finish (the gate lives on the worker's event loop)."""
        assert worker.loop is not None
        worker.loop.call_soon_threadsafe(self.probe.gate.set)

    def worker(self, concurrency: int, prefetch: int) -> AsyncWorker:
        worker = AsyncWorker(
            self.broker, concurrency=concurrency, prefetch=prefetch, worker_timeout=POLL_MS
        )
        worker.start()
        return worker


@pytest.fixture
def rig(servers: EmbeddedUrls, redis_client: redis.Redis) -> Iterator[Rig]:
    redis_client.flushdb()
    broker = RedisBroker(url=servers.redis_url)
    broker.add_middleware(AsyncIO())
    queue = f"q{uuid.uuid4().hex[:8]}"
    probe = Probe()

    async def hold(name: str, hang: bool = False) -> None:
        probe.enter()
        message = current_message()
        if message is not None:
            probe.message_ids.add(message.message_id)
        try:
            await (asyncio.Event() if hang else probe.gate).wait()
        finally:
            probe.leave(name)

    actor = dramatiq.actor(hold, broker=broker, queue_name=queue, max_retries=0)
    yield Rig(broker, redis_client, probe, queue, actor)
    broker.close()


def test_no_more_messages_run_at_once_than_the_concurrency(rig: Rig) -> None:
    for index in range(40):
        rig.actor.send(f"m{index}")
    worker = rig.worker(concurrency=5, prefetch=3)
    try:
        wait_until(lambda: rig.probe.running == 5, DEADLINE_S, "5 messages running")
        rig.release(worker)
        wait_until(lambda: len(rig.probe.finished) == 40, DEADLINE_S, "every message to finish")
    finally:
        worker.stop(timeout=5000)
    assert rig.probe.most_running == 5
    assert rig.queued() == 0
    assert rig.fetched_unacked() == 0


def test_a_worker_holds_at_most_concurrency_plus_prefetch_messages(rig: Rig) -> None:
    for index in range(40):
        rig.actor.send(f"m{index}")
    worker = rig.worker(concurrency=5, prefetch=3)
    try:
        wait_until(lambda: rig.queued() == 40 - 8, DEADLINE_S, "the worker to fetch 8 messages")
        wait_until(lambda: rig.probe.running == 5, DEADLINE_S, "5 messages running")
        # Another fetch round cannot take more while all are held: the queue keeps the rest.
        wait_until(lambda: worker.consumers[rig.queue].consumer is not None, DEADLINE_S, "consumer")
        consumer = worker.consumers[rig.queue].consumer
        assert consumer.outstanding_message_count == 8
        assert rig.queued() == 32
        assert rig.fetched_unacked() == 8
    finally:
        rig.release(worker)
        worker.stop(timeout=5000)


def test_the_current_message_is_known_inside_the_run(rig: Rig) -> None:
    sent = {rig.actor.send(f"m{index}").message_id for index in range(3)}
    rig.probe.gate.set()
    worker = rig.worker(concurrency=3, prefetch=0)
    try:
        wait_until(lambda: len(rig.probe.finished) == 3, DEADLINE_S, "3 messages to finish")
    finally:
        worker.stop(timeout=5000)
    assert rig.probe.message_ids == sent


def test_a_graceful_stop_finishes_what_it_can_and_hands_back_the_rest(rig: Rig) -> None:
    # 20 that finish once released, 10 that never do, all started; 30 more fetched or queued.
    for index in range(20):
        rig.actor.send(f"ends{index}")
    for index in range(10):
        rig.actor.send(f"hangs{index}", hang=True)
    for index in range(30):
        rig.actor.send(f"later{index}")
    worker = rig.worker(concurrency=30, prefetch=10)
    wait_until(lambda: rig.probe.running == 30, DEADLINE_S, "30 messages running")
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 5000})
    stopper.start()
    wait_until(lambda: worker.stopping.is_set(), DEADLINE_S, "the stop to begin")
    rig.release(worker)
    stopper.join(DEADLINE_S)
    assert not stopper.is_alive()

    finished = [name for name in rig.probe.finished if not name.startswith("hangs")]
    assert sorted(finished) == sorted(f"ends{index}" for index in range(20))
    # Every message that did not finish is back in the queue: none is lost, none left fetched.
    assert rig.queued() == 40
    assert rig.fetched_unacked() == 0


def test_a_failing_message_goes_to_the_dead_letters(rig: Rig) -> None:
    async def boom() -> None:
        raise RuntimeError("boom")

    failing = dramatiq.actor(boom, broker=rig.broker, queue_name=rig.queue, max_retries=0)
    failing.send()
    worker = rig.worker(concurrency=2, prefetch=0)
    try:
        dead = f"dramatiq:{rig.queue}.XQ"
        wait_until(lambda: rig.client.zcard(dead) == 1, DEADLINE_S, "a dead letter")
    finally:
        worker.stop(timeout=5000)
    assert rig.queued() == 0
    assert rig.fetched_unacked() == 0


def test_a_delayed_message_runs_once_its_delay_is_over(rig: Rig) -> None:
    # A producer sending with a delay (Dramatiq's eta): the message waits in the delay queue.
    rig.probe.gate.set()
    rig.actor.send_with_options(args=("later",), delay=200)
    worker = rig.worker(concurrency=2, prefetch=0)
    try:
        wait_until(lambda: rig.probe.finished == ["later"], DEADLINE_S, "the delayed message")
    finally:
        worker.stop(timeout=5000)
    assert rig.fetched_unacked() == 0


def test_an_ack_that_fails_unexpectedly_costs_its_batch_its_acks_and_the_rest_nothing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_settle = acks.settle_many

    def settle(consumer: Any, messages: Sequence[MessageProxy]) -> None:
        if any(message.args == ("poison",) for message in messages):
            raise ResponseError("an answer no one expected")
        real_settle(consumer, messages)

    monkeypatch.setattr(acks, "settle_many", settle)
    rig.probe.gate.set()
    rig.actor.send("poison")
    worker = rig.worker(concurrency=4, prefetch=0)
    try:
        wait_until(lambda: rig.probe.finished == ["poison"], DEADLINE_S, "the poisoned run")
        for index in range(20):
            rig.actor.send(f"m{index}")
        wait_until(lambda: len(rig.probe.finished) == 21, DEADLINE_S, "every message to finish")
        # The acker lives on: every other message is acked; the poisoned one runs again
        # once this worker is gone, as with Dramatiq's own worker.
        wait_until(lambda: rig.fetched_unacked() == 1, DEADLINE_S, "the others' acks")
    finally:
        worker.stop(timeout=5000)
