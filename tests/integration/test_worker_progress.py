"""A worker process's progress file, written by its real threads on a real Redis broker: it
moves while the worker is healthy and shows which part stopped, the event loop or a consumer."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.middleware import AsyncIO

from shared.embedded import EmbeddedUrls
from tests.helpers import wait_until
from worker_service.async_worker import AsyncWorker
from worker_service.progress import PROGRESS_DIR_ENV, Assessment, Progress, assess, read_progress
from worker_service.wakeup import WakingRedisBroker

DEADLINE_S = 20.0
# Small, so a stall shows within the test's deadlines; a healthy worker turns every second.
MAX_AGE_S = 2.5


@dataclass
class Rig:
    worker: AsyncWorker
    directory: Path
    queue: str

    def verdict(self) -> Assessment:
        return assess(read_progress(self.directory), time.monotonic(), MAX_AGE_S)


@pytest.fixture
def rig(
    servers: EmbeddedUrls,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Rig]:
    redis_client.flushdb()
    monkeypatch.setenv(PROGRESS_DIR_ENV, str(tmp_path))
    broker = WakingRedisBroker(url=servers.redis_url)
    broker.add_middleware(AsyncIO())
    broker.add_middleware(Progress(broker.turns))
    queue = f"q{uuid.uuid4().hex[:8]}"

    async def noop() -> None:
        return None

    dramatiq.actor(noop, broker=broker, queue_name=queue)
    worker = AsyncWorker(broker, concurrency=2, prefetch=0, worker_timeout=20)
    worker.start()
    try:
        yield Rig(worker, tmp_path, queue)
    finally:
        worker.stop(timeout=5000)
        broker.close()


def test_a_healthy_worker_reports_its_loop_and_every_consumer(rig: Rig) -> None:
    wait_until(lambda: rig.verdict().processes, DEADLINE_S, "a progress file")
    # Fresh over several thresholds: the file keeps moving.
    end = time.monotonic() + 2 * MAX_AGE_S
    while time.monotonic() < end:
        verdict = rig.verdict()
        assert verdict.alive, verdict.problems
        assert verdict.progressing, verdict.problems
        time.sleep(0.1)
    (process,) = verdict.processes
    assert set(process["consumer_age_s"]) == {rig.queue, f"{rig.queue}.DQ"}


def test_a_blocked_event_loop_goes_stale_and_recovers(rig: Rig) -> None:
    wait_until(lambda: rig.verdict().alive, DEADLINE_S, "a fresh progress file")
    assert rig.worker.loop is not None
    rig.worker.loop.call_soon_threadsafe(time.sleep, 3 * MAX_AGE_S)
    wait_until(lambda: not rig.verdict().alive, DEADLINE_S, "the loop to go stale")
    (problem,) = rig.verdict().problems
    assert problem.startswith(f"pid {os.getpid()}: event loop silent for ")
    wait_until(lambda: rig.verdict().alive, DEADLINE_S, "the loop to tick again")


def test_a_stopped_consumer_thread_fails_liveness_while_the_loop_ticks(rig: Rig) -> None:
    wait_until(lambda: rig.verdict().alive, DEADLINE_S, "a fresh progress file")
    consumer = rig.worker.consumers[rig.queue]
    consumer.stop()
    consumer.join(DEADLINE_S)
    assert not consumer.is_alive()
    wait_until(lambda: not rig.verdict().alive, DEADLINE_S, "the consumer to go stale")
    # Only that consumer: the loop and the delay queue's consumer still move.
    (problem,) = rig.verdict().problems
    assert problem.startswith(f"pid {os.getpid()}: {rig.queue} consumer silent for ")


def test_a_stopped_worker_removes_its_progress_file(rig: Rig) -> None:
    wait_until(lambda: read_progress(rig.directory), DEADLINE_S, "a progress file")
    rig.worker.stop(timeout=5000)
    assert read_progress(rig.directory) == []
