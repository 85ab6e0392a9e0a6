"""A Redis broker whose idle consumers wait on their queue instead of polling it blind.

Dramatiq's Redis consumer fetches with a script and, finding nothing, sleeps; at low rates that
sleep decides how late a message starts. Here a fetch that finds nothing first blocks on the
queue's list (`BLMOVE key key RIGHT RIGHT`: it returns as soon as a message id is there and puts
it straight back, so the list and its order are unchanged), then fetches again. An idle worker
thus costs one blocked call per `wait_s` instead of a poll every few milliseconds, and a new
message is fetched one round trip after it is queued. Delay queues keep Dramatiq's polling:
their consumer must also wake to release messages whose time has come.
"""

from __future__ import annotations

from typing import Any

from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, q_name

# Dramatiq's own idle wake-up: heartbeats and maintenance still run at least this often.
DEFAULT_WAIT_S = 1


class WakingRedisBroker(RedisBroker):
    """`RedisBroker` with a blocking wait on an empty (non-delay) queue before giving up a fetch."""

    def __init__(self, *, wait_s: int = DEFAULT_WAIT_S, **options: Any) -> None:
        super().__init__(**options)  # type: ignore[no-untyped-call]
        self.wait_s = wait_s

    def do_fetch(self, queue_name: str, count: int) -> list[bytes]:
        fetch = self._dispatch("fetch")  # type: ignore[no-untyped-call]
        messages: list[bytes] = fetch(queue_name, count)
        if messages or dq_name(q_name(queue_name)) == queue_name:
            return messages
        key = f"{self.namespace}:{queue_name}"
        if self.client.blmove(key, key, self.wait_s, "RIGHT", "RIGHT") is None:
            return []
        woken: list[bytes] = fetch(queue_name, count)
        return woken
