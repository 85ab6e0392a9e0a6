"""What `python -m dramatiq bench.bare_dramatiq_actor` loads: Dramatiq's stock Redis broker on
the bench's Redis (`REDIS_URL`) and one actor that does nothing (see bench/bare_dramatiq.py)."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.bare_dramatiq import ACTOR, QUEUE

# Dramatiq's command line finds the broker this module sets as it imports it.
dramatiq.set_broker(RedisBroker(url=os.environ["REDIS_URL"]))  # type: ignore[no-untyped-call]


@dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, max_retries=0)
def bare_noop() -> None:
    """Does nothing: what is measured is the broker and worker around it."""
