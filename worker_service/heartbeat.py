"""A worker process that stays known to be alive, however long its scans take.

Dramatiq's Redis broker marks a worker alive (`__heartbeats__`, id -> epoch ms) only as a side
effect of its commands; a worker whose prefetch is full of long scans sends none for a while
and looks dead, and a dead worker's fetched messages go back to the queue only when some
command happens to run the broker's maintenance. Here a thread refreshes the mark every
`broker_heartbeat_timeout_s / HEARTBEATS_PER_TIMEOUT`, from boot until the worker has stopped
(its graceful stop included), so the relay leader can requeue the fetched messages of a
worker silent for `broker_heartbeat_timeout_s` without ever mistaking a busy one for dead.
"""

from __future__ import annotations

import threading

import redis
from dramatiq.broker import Broker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis
from dramatiq.middleware import Middleware
from dramatiq.worker import Worker

from shared import keys
from shared.dramatiq_private import client_of
from shared.logging import get_logger

log = get_logger(__name__)

# Beats per timeout: a worker is declared dead only after missing several in a row.
HEARTBEATS_PER_TIMEOUT = 5


class Heartbeat(Middleware):
    """Refreshes this process's broker id in the heartbeat set from a thread of its own."""

    def __init__(self, timeout_s: float) -> None:
        self.interval_s = timeout_s / HEARTBEATS_PER_TIMEOUT
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def beat(self, broker: RedisBroker) -> None:
        """One heartbeat; a Redis error is logged and the next beat tries again."""
        try:
            client_of(broker).zadd(keys.BROKER_HEARTBEATS_KEY, {broker.broker_id: current_millis()})
        except redis.RedisError as exc:
            log.warning("worker_heartbeat_failed", error=type(exc).__name__)

    def _run(self, broker: RedisBroker) -> None:
        while not self.stopped.wait(self.interval_s):
            self.beat(broker)

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        if not isinstance(broker, RedisBroker):
            return
        self.beat(broker)
        self.thread = threading.Thread(
            target=self._run, args=(broker,), name="scan-outbox-heartbeat", daemon=True
        )
        self.thread.start()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(timeout=self.interval_s + 1)
