"""Enqueue a batch of messages on Dramatiq's Redis broker in one round trip.

Dramatiq has no batch enqueue: `RedisBroker.enqueue` runs the broker's `dispatch`
Lua script once per message, one round trip each. This module runs the same
script for a whole batch in one pipeline (`shared.dramatiq_private.run_dispatches`,
Dramatiq's private API, whose one version check turns the pipeline off for any other
series), and tests/integration/test_relay_pipelined.py has a real Dramatiq worker consume
what it writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from shared import dramatiq_private
from shared.dramatiq_private import Dispatch, run_dispatches


def usable(broker: RedisBroker) -> bool:
    """True when this Dramatiq is the series the pipeline was written and tested for."""
    return dramatiq_private.can_pipeline(broker)


def enqueue_many(
    broker: RedisBroker, messages: Sequence[dramatiq.Message[Any]]
) -> list[tuple[str, object]]:
    """Enqueue `messages` as `broker.enqueue` would, in one pipeline.

    Returns one entry per message: the id Redis stores it under, and the script's
    reply or the exception Redis answered for that message alone. A connection
    failure raises instead, and then any prefix of the batch may have reached
    Redis. The broker's middleware hooks are not run (the relay's broker has none).
    """
    dispatches: list[Dispatch] = []
    redis_message_ids: list[str] = []
    for message in messages:
        # Like `enqueue`: a fresh Redis-side id per send, so a message sent twice
        # is stored twice rather than overwriting itself mid-delivery.
        redis_message_id = str(uuid.uuid4())
        redis_message_ids.append(redis_message_id)
        stored = message.copy(options={"redis_message_id": redis_message_id})
        dispatches.append(("enqueue", message.queue_name, (redis_message_id, stored.encode())))
    replies = run_dispatches(broker, dispatches)
    return list(zip(redis_message_ids, replies, strict=True))
