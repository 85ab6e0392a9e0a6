"""The worker's broker against the real Redis: an idle fetch waits on the queue, not a timer."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from shared import keys
from shared.dramatiq_broker import build_message, create_broker
from shared.settings import Settings
from tests.helpers import wait_until
from worker_service.wakeup import DELAY_QUEUE_POLL_MS, WakingRedisBroker

QUEUE = "wakeup_check"


@pytest.fixture
def waking(settings: Settings, redis_client: redis.Redis) -> Iterator[WakingRedisBroker]:
    redis_client.flushdb()
    broker = WakingRedisBroker(url=settings.effective_broker_url, wait_s=5)
    broker.declare_queue(QUEUE)
    yield broker
    broker.client.connection_pool.disconnect()


def send(settings: Settings, count: int) -> list[str]:
    sender = create_broker(settings, middleware=[])
    ids = []
    for _ in range(count):
        message = build_message(uuid.uuid4(), QUEUE, keys.SCAN_ACTOR, {"task_id": "x"})
        ids.append(sender.enqueue(message).message_id)
    sender.client.connection_pool.disconnect()
    return ids


def blocked_fetches(redis_client: redis.Redis) -> int:
    """Clients blocked in the wait on a queue right now."""
    return sum(1 for client in redis_client.client_list() if client.get("cmd") == "blmove")


def blmove_calls(redis_client: redis.Redis) -> int:
    stats = redis_client.info("commandstats").get("cmdstat_blmove", {})
    return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0


def test_an_idle_fetch_returns_as_soon_as_a_message_is_queued(
    waking: WakingRedisBroker, settings: Settings, redis_client: redis.Redis
) -> None:
    # The wait is long (30 s): a fetch that returns within the join's 10 s was woken by the
    # message, not by the end of its wait.
    waking.wait_s = 30
    fetched: list[object] = []
    fetcher = threading.Thread(target=lambda: fetched.extend(waking.do_fetch(QUEUE, 4)))
    fetcher.start()
    wait_until(lambda: blocked_fetches(redis_client), 5.0, "the fetch to block on the queue")
    send(settings, 1)
    fetcher.join(timeout=10)
    assert not fetcher.is_alive()
    assert len(fetched) == 1


def test_waiting_leaves_the_queue_and_its_order_unchanged(
    waking: WakingRedisBroker, settings: Settings, redis_client: redis.Redis
) -> None:
    sent = send(settings, 3)
    before = redis_client.lrange(f"dramatiq:{QUEUE}", 0, -1)
    key = f"dramatiq:{QUEUE}"
    assert waking.client.blmove(key, key, 1, "RIGHT", "RIGHT") is not None
    assert redis_client.lrange(key, 0, -1) == before
    fetched = waking.do_fetch(QUEUE, 10)
    assert len(fetched) == len(sent) == 3


def test_an_empty_fetch_gives_up_after_the_wait_and_delay_queues_never_wait(
    settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.flushdb()
    broker = WakingRedisBroker(url=settings.effective_broker_url, wait_s=1)
    calls = blmove_calls(redis_client)
    assert broker.do_fetch(QUEUE, 4) == []
    assert blmove_calls(redis_client) == calls + 1
    assert broker.do_fetch(f"{QUEUE}.DQ", 4) == []
    assert blmove_calls(redis_client) == calls + 1
    broker.client.connection_pool.disconnect()


def test_only_delay_queues_keep_dramatiqs_slower_idle_poll(waking: WakingRedisBroker) -> None:
    # The cap a worker passes (SCAN_WORKER_IDLE_POLL_MS) holds for the scan queue; the delay
    # queue, which scan-outbox never uses, polls no faster than Dramatiq's default.
    assert waking.consume(QUEUE, 1, 20).timeout == 20  # type: ignore[attr-defined]
    assert waking.consume(f"{QUEUE}.DQ", 1, 20).timeout == DELAY_QUEUE_POLL_MS  # type: ignore[attr-defined]
    assert waking.consume(f"{QUEUE}.DQ", 1, 5000).timeout == 5000  # type: ignore[attr-defined]
