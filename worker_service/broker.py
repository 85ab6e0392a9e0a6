"""The one place the worker's broker is set, before any actor is declared."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, CurrentMessage

from shared.broker import create_broker
from shared.settings import get_settings


def install_broker() -> RedisBroker:
    """Build the Redis broker with asyncio support and make it Dramatiq's global broker."""
    broker = create_broker(get_settings())
    broker.add_middleware(AsyncIO())
    broker.add_middleware(CurrentMessage())
    dramatiq.set_broker(broker)
    return broker
