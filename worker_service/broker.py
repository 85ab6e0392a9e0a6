"""The one place the worker's broker is set, before any actor is declared."""

from __future__ import annotations

import os
import socket
import uuid

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

from shared import keys, redis_clients
from shared.settings import get_settings
from worker_service.async_worker import AsyncWorkerOnly
from worker_service.heartbeat import Heartbeat
from worker_service.progress import Progress
from worker_service.wakeup import WakingRedisBroker


def install_broker() -> RedisBroker:
    """Build the Redis broker with asyncio support and make it Dramatiq's global broker."""
    settings = get_settings()
    # Idle consumers block on their queue (woken by the message) rather than poll it blind.
    broker = WakingRedisBroker(client=redis_clients.sync_client(settings, broker=True))
    # Dramatiq's heartbeat ZSET lists broker ids; a named one tells operators (and the
    # dashboard) which host and process a worker is. Set before the first command.
    nonce = uuid.uuid4().hex[:8]
    broker.broker_id = keys.worker_broker_id(socket.gethostname(), os.getpid(), nonce)
    # First, so that a worker it refuses boots nothing of the rest.
    broker.add_middleware(AsyncWorkerOnly(), before=type(broker.middleware[0]))
    broker.add_middleware(AsyncIO())
    broker.add_middleware(Heartbeat(settings.broker_heartbeat_timeout_s))
    broker.add_middleware(Progress(broker.turns))
    dramatiq.set_broker(broker)
    return broker
