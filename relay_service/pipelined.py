"""Enqueue a batch of messages on Dramatiq's Redis broker in one round trip.

Dramatiq has no batch enqueue: `RedisBroker.enqueue` runs the broker's `dispatch`
Lua script once per message, one round trip each. This module queues the same
script, with the arguments `RedisBroker._dispatch` passes, on a redis pipeline.
It is the only place that relies on Dramatiq's private API, so pyproject pins
Dramatiq to the series checked here, `SUPPORTED` turns it off for any other,
and tests/integration/test_relay_pipelined.py has a real Dramatiq worker
consume what it writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

SUPPORTED_SERIES = "2.2."
SUPPORTED = dramatiq.__version__.startswith(SUPPORTED_SERIES)


def usable(broker: RedisBroker) -> bool:
    """True when this Dramatiq is the series the pipeline was written and tested for."""
    return SUPPORTED and "dispatch" in broker.scripts


def enqueue_many(
    broker: RedisBroker, messages: Sequence[dramatiq.Message[Any]]
) -> list[tuple[str, object]]:
    """Enqueue `messages` as `broker.enqueue` would, in one pipeline.

    Returns one entry per message: the id Redis stores it under, and the script's
    reply or the exception Redis answered for that message alone. A connection
    failure raises instead, and then any prefix of the batch may have reached
    Redis. The broker's middleware hooks are not run (the relay's broker has none).
    """
    dispatch = broker.scripts["dispatch"]
    namespace = [broker.namespace]
    max_unpack = broker._max_unpack_size()  # type: ignore[no-untyped-call]
    pipe = broker.client.pipeline(transaction=False)
    redis_message_ids: list[str] = []
    for message in messages:
        # Like `enqueue`: a fresh Redis-side id per send, so a message sent twice
        # is stored twice rather than overwriting itself mid-delivery.
        redis_message_id = str(uuid.uuid4())
        redis_message_ids.append(redis_message_id)
        stored = message.copy(options={"redis_message_id": redis_message_id})
        args = [
            "enqueue",
            current_millis(),
            message.queue_name,
            broker.broker_id,
            broker.heartbeat_timeout,
            broker.dead_message_ttl,
            broker._should_do_maintenance("enqueue"),
            max_unpack,
            redis_message_id,
            stored.encode(),
        ]
        dispatch(keys=namespace, args=args, client=pipe)
    replies: list[object] = pipe.execute(raise_on_error=False)
    return list(zip(redis_message_ids, replies, strict=True))
