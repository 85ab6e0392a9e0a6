"""How quickly an idle worker notices a new message: the cap on its Redis consumer's poll sleep.

Dramatiq's Redis consumer has no blocking fetch: with an empty queue it sleeps 5 ms * 2^misses,
up to the worker timeout (1000 ms by default, from the `dramatiq_worker_timeout` environment
variable read once at import). That sleep, not the relay, dominated commit → start at low rates,
so `SCAN_WORKER_IDLE_POLL_MS` caps it for the consumers only; worker threads keep Dramatiq's
own timeout, which costs wake-ups and buys no latency (a queued message wakes them at once).
"""

from __future__ import annotations

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware
from dramatiq.worker import Worker

from shared import dramatiq_private

# Dramatiq's default worker timeout: how often an idle worker thread wakes to check for shutdown.
WORKER_THREAD_TIMEOUT_S = 1.0


class IdlePollCap(Middleware):
    """Sets the consumers' idle poll cap before the worker starts them; restores the threads'."""

    def __init__(self, poll_ms: int) -> None:
        if poll_ms < 1:
            raise ValueError("the idle poll cap must be at least 1 ms")
        self.poll_ms = poll_ms

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        # Consumer threads are created after this hook and read the cap once, at creation.
        dramatiq_private.set_consumer_poll_ms(worker, self.poll_ms)

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        # Worker threads read their timeout on every loop: the next turn uses Dramatiq's default.
        dramatiq_private.set_worker_thread_timeout(worker, WORKER_THREAD_TIMEOUT_S)
