"""Acknowledge a batch of finished messages on Dramatiq's Redis broker in one round trip.

Dramatiq's Redis consumer acks (or nacks) one message per call, each one run of the broker's
`dispatch` script and one round trip. Runs end in bursts, so the worker runs the same script
for a whole burst in one pipeline (`shared.dramatiq_private.run_dispatches`). Like the
relay's batched enqueue (`relay_service.pipelined`), this relies on Dramatiq's private API, of
the series pyproject pins; tests/integration/test_async_worker.py has real messages acked,
dead-lettered and handed back through it.
"""

from __future__ import annotations

from collections.abc import Sequence

from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from redis.exceptions import ResponseError

from shared.dramatiq_private import Dispatch, RedisConsumer, forget_outstanding, run_dispatches


def command_for(message: MessageProxy) -> str:
    """`nack` moves a failed message to the dead letters; `ack` forgets a settled one."""
    return "nack" if message.failed else "ack"


def settle_many(consumer: RedisConsumer, messages: Sequence[MessageProxy]) -> None:
    """Ack or nack every one of `messages` as `consumer` (which fetched them) would, in one
    pipeline. A connection failure raises (redis.ConnectionError) and may have settled any
    prefix of them: settling a message twice changes nothing."""
    broker: RedisBroker = consumer.broker
    # The consumer's queue, not the message's: Dramatiq acks a delayed message on the queue
    # it was fetched from.
    dispatches: list[Dispatch] = [
        (command_for(message), consumer.queue_name, (message.options["redis_message_id"],))
        for message in messages
    ]
    for reply in run_dispatches(broker, dispatches):
        if isinstance(reply, ResponseError):
            raise reply
    forget_outstanding(consumer, [message.message_id for message in messages])
