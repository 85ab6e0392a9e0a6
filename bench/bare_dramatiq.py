"""A bare Dramatiq no-op actor: the most one worker process of this broker can drain.

`worker_command` runs Dramatiq's stock worker (1 process, 8 threads, its default) on
bench/bare_dramatiq_actor.py: the stock Redis broker on the bench's Redis, one actor that does
nothing, on a queue of its own. No database, no outbox, no lease: what e2e_drain's pipeline is held
against (target ≥ 0.8 of its rate). Each ack deletes the message from the queue's hash, so an
empty hash with an empty list means every message has been run and acked.
"""

from __future__ import annotations

import uuid

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

QUEUE = "bench_bare"
ACTOR = "bare_noop"
THREADS = 8


def worker_command(python: str) -> list[str]:
    actor_module = "bench.bare_dramatiq_actor"
    return [python, "-m", "dramatiq", actor_module, "--processes", "1", "--threads", str(THREADS)]


def enqueue(redis_url: str, count: int) -> None:
    """`count` messages on the queue, sent the way the relay sends (one enqueue each)."""
    broker = RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
    broker.declare_queue(QUEUE)
    for _ in range(count):
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=QUEUE,
            actor_name=ACTOR,
            args=(),
            kwargs={},
            options={},
            message_id=str(uuid.uuid4()),
        )
        broker.enqueue(message)
    broker.close()


def unfinished(client: redis.Redis) -> int:
    """Messages not yet acked: those still in the queue's hash."""
    return int(client.hlen(f"dramatiq:{QUEUE}.msgs"))
