"""A Redis broker whose idle consumers wait on their queue instead of polling it blind.

Dramatiq's Redis consumer fetches with a script and, finding nothing, sleeps; at low rates that
sleep decides how late a message starts. Here a fetch that finds nothing first blocks on the
queue's list (`BLMOVE key key RIGHT RIGHT`: it returns as soon as a message id is there and puts
it straight back, so the list and its order are unchanged), then fetches again. An idle worker
thus costs one blocked call per `wait_s` instead of a poll every few milliseconds, and a new
message is fetched one round trip after it is queued. Delay queues keep Dramatiq's polling:
their consumer must also wake to release messages whose time has come. scan-outbox never sends
delayed messages (retries and deferrals wait in the outbox), so a delay-queue consumer polls
at no less than `DELAY_QUEUE_POLL_MS` whatever the idle-poll cap: otherwise a low cap, there
for the scan queue, makes the idle worker's CPU go on polling an empty delay queue.

Its consumers also record each turn in `turns`, the evidence the worker's probes judge.
"""

from __future__ import annotations

from typing import Any

from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, q_name

from shared.dramatiq_private import RedisConsumer, client_of, dispatcher
from worker_service.progress import ConsumerTurns

# Dramatiq's own idle wake-up: heartbeats and maintenance still run at least this often.
DEFAULT_WAIT_S = 1
# Dramatiq's default idle cap, kept for delay queues.
DELAY_QUEUE_POLL_MS = 1000


def is_delay_queue(queue_name: str) -> bool:
    return dq_name(q_name(queue_name)) == queue_name


# Dramatiq's Redis consumer is private (`shared.dramatiq_private`); `consumer_class` is how its
# broker lets a subclass choose the consumer.
class TurningConsumer(RedisConsumer):
    """Dramatiq's Redis consumer, recording when each turn (one fetch or idle wait) starts and
    ends; a turn that raises still ends."""

    broker: WakingRedisBroker

    def __next__(self) -> MessageProxy | None:
        self.broker.turns.enter(self.queue_name)
        try:
            message: MessageProxy | None = super().__next__()  # type: ignore[no-untyped-call]
        finally:
            self.broker.turns.leave(self.queue_name)
        return message


class WakingRedisBroker(RedisBroker):
    """`RedisBroker` with a blocking wait on an empty (non-delay) queue before giving up a fetch."""

    def __init__(self, *, wait_s: int = DEFAULT_WAIT_S, **options: Any) -> None:
        super().__init__(**options)  # type: ignore[no-untyped-call]
        self.wait_s = wait_s
        self.turns = ConsumerTurns()

    @property
    def consumer_class(self) -> type[TurningConsumer]:
        return TurningConsumer

    def do_fetch(self, queue_name: str, count: int) -> list[bytes]:
        fetch = dispatcher(self, "fetch")
        messages: list[bytes] = fetch(queue_name, count)
        if messages or is_delay_queue(queue_name):
            return messages
        key = f"{self.namespace}:{queue_name}"
        if client_of(self).blmove(key, key, self.wait_s, "RIGHT", "RIGHT") is None:
            return []
        woken: list[bytes] = fetch(queue_name, count)
        return woken

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        if is_delay_queue(queue_name):
            timeout = max(timeout, DELAY_QUEUE_POLL_MS)
        return super().consume(queue_name, prefetch, timeout)
