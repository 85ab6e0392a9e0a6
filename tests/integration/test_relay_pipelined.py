"""The pipelined publisher against the real Redis, consumed by a real Dramatiq worker."""

from __future__ import annotations

import asyncio
import threading
import uuid

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage

from relay_service import pipelined
from relay_service.publisher import DramatiqPublisher
from shared import keys
from shared.db.outbox import ClaimedMessage
from shared.dramatiq_broker import build_message, create_broker
from shared.settings import Settings
from tests.helpers import wait_until

QUEUE = "pipeline_check"


def rows(count: int) -> list[ClaimedMessage]:
    return [
        ClaimedMessage(
            id=index,
            message_id=uuid.uuid4(),
            actor=keys.SCAN_ACTOR,
            queue=QUEUE,
            payload={"task_id": f"task-{index}"},
            task_id=None,
            publish_attempts=0,
        )
        for index in range(count)
    ]


def test_a_real_dramatiq_worker_runs_each_pipelined_message_once_under_its_outbox_id(
    settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.flushdb()
    consumer = create_broker(settings)
    consumer.add_middleware(CurrentMessage())
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def scan_domain(task_id: str) -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        with lock:
            seen.append((message.message_id, task_id))

    dramatiq.actor(
        scan_domain, actor_name=keys.SCAN_ACTOR, queue_name=QUEUE, broker=consumer, max_retries=0
    )
    publisher = DramatiqPublisher(create_broker(settings, middleware=[], socket_timeout_s=5))
    assert publisher.use_pipeline
    batch = rows(300)
    outcomes = asyncio.run(publisher.publish(batch))
    stored_ids = {
        key.decode() for key in redis_client.hkeys(f"{keys.broker_queue_key(QUEUE)}.msgs")
    }
    # Each outcome is the id the broker stores that message under.
    assert all(isinstance(outcome, str) for outcome in outcomes)
    assert set(outcomes) == stored_ids
    assert len(stored_ids) == len(batch)

    publisher.broker.client.connection_pool.disconnect()

    worker = dramatiq.Worker(consumer, worker_timeout=100, worker_threads=4)
    worker.start()
    try:
        wait_until(lambda: len(seen) >= len(batch), 30, "the worker to run every message")
    finally:
        worker.stop()
        consumer.client.connection_pool.disconnect()
    expected = [(str(row.message_id), row.payload["task_id"]) for row in batch]
    assert sorted(seen) == sorted(expected)
    # Every message was acknowledged: nothing is left in the broker's storage.
    assert redis_client.hlen(f"{keys.broker_queue_key(QUEUE)}.msgs") == 0
    assert redis_client.llen(keys.broker_queue_key(QUEUE)) == 0


def test_pipelined_messages_are_stored_exactly_as_enqueue_stores_them(
    settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.flushdb()
    broker = create_broker(settings, middleware=[])
    one, two = rows(2)
    broker.enqueue(build_message(one.message_id, QUEUE, one.actor, one.payload))
    [(two_stored, _reply)] = pipelined.enqueue_many(
        broker, [build_message(two.message_id, QUEUE, two.actor, two.payload)]
    )
    broker.client.connection_pool.disconnect()

    stored = redis_client.hgetall(f"{keys.broker_queue_key(QUEUE)}.msgs")
    by_id = {}
    for redis_id, data in stored.items():
        message = dramatiq.Message.decode(data)
        assert message.options["redis_message_id"] == redis_id.decode()
        by_id[message.message_id] = message
    via_enqueue, via_pipeline = by_id[str(one.message_id)], by_id[str(two.message_id)]
    assert via_pipeline.options["redis_message_id"] == two_stored
    assert via_pipeline.asdict().keys() == via_enqueue.asdict().keys()
    assert via_pipeline.options.keys() == via_enqueue.options.keys()
    assert (via_pipeline.queue_name, via_pipeline.actor_name, via_pipeline.kwargs) == (
        QUEUE,
        keys.SCAN_ACTOR,
        two.payload,
    )
    assert redis_client.llen(keys.broker_queue_key(QUEUE)) == 2


def script_calls(client: redis.Redis) -> dict[str, int]:
    """Runs of scripts, and SCRIPT commands of any kind (Redis 7 counts each subcommand)."""
    stats = client.info("commandstats")
    return {
        "evalsha": int(stats.get("cmdstat_evalsha", {}).get("calls", 0)),
        "script": sum(
            int(value["calls"])
            for name, value in stats.items()
            if name.startswith("cmdstat_script")
        ),
    }


def test_a_batch_is_one_round_trip_and_survives_redis_losing_its_scripts(
    settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.flushdb()
    broker = create_broker(settings, middleware=[])
    batch = [build_message(row.message_id, QUEUE, row.actor, row.payload) for row in rows(6)]
    try:
        pipelined.enqueue_many(broker, batch[:2])
        redis_client.config_resetstat()
        pipelined.enqueue_many(broker, batch[2:4])
        # One pipeline of script runs, nothing asked beforehand.
        assert script_calls(redis_client) == {"evalsha": 2, "script": 0}

        # A restarted Redis has no scripts: the runs answered NOSCRIPT are run again.
        redis_client.script_flush()
        redis_client.config_resetstat()
        replies = pipelined.enqueue_many(broker, batch[4:])
    finally:
        broker.client.connection_pool.disconnect()
    assert not [reply for _stored, reply in replies if isinstance(reply, Exception)]
    # Two answered NOSCRIPT, one SCRIPT LOAD, two run again.
    assert script_calls(redis_client) == {"evalsha": 4, "script": 1}
    assert redis_client.llen(keys.broker_queue_key(QUEUE)) == 6
    assert redis_client.hlen(f"{keys.broker_queue_key(QUEUE)}.msgs") == 6
