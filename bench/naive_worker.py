"""A Dramatiq worker module for the `race` benchmark: `dramatiq bench.naive_worker`.

Its one actor takes the name `scan_domain` on its own queue, so every dispatch method
of the benchmark (including the real relay, which publishes only known actor names)
sends it the very message the API would. It looks the task up ONCE, with no retry and
no Redis marker, as a worker without safeguards would, and counts in Redis whether it
was there: `found`, or `missing` (the id kept in a set, to check later that the task
did commit).
"""

from __future__ import annotations

import threading

import dramatiq
import psycopg
import redis

from bench.race import FOUND_KEY, MISSING_IDS_KEY, MISSING_KEY, QUEUE, SEEN_IDS_KEY
from shared import keys
from shared.dramatiq_broker import create_broker
from shared.settings import get_settings

# A plain lookup by primary key, on the worker thread's own autocommit connection.
_TASK_EXISTS_SQL = "SELECT 1 FROM tasks WHERE id = %s"

_settings = get_settings()
dramatiq.set_broker(create_broker(_settings))
_counts = redis.Redis.from_url(_settings.redis_url.get_secret_value())
_local = threading.local()


def _connection() -> psycopg.Connection[tuple[int]]:
    connection: psycopg.Connection[tuple[int]] | None = getattr(_local, "connection", None)
    if connection is None or connection.closed:
        connection = psycopg.connect(_settings.database_url.get_secret_value(), autocommit=True)
        _local.connection = connection
    return connection


@dramatiq.actor(actor_name=keys.SCAN_ACTOR, queue_name=QUEUE, max_retries=0)
def naive_scan(task_id: str, request_id: str | None = None) -> None:
    """Count whether the task the message names is visible at the first look."""
    row = _connection().execute(_TASK_EXISTS_SQL, (task_id,)).fetchone()
    with _counts.pipeline() as pipe:
        pipe.sadd(SEEN_IDS_KEY, task_id)
        if row is not None:
            pipe.incr(FOUND_KEY)
        else:
            pipe.incr(MISSING_KEY)
            pipe.sadd(MISSING_IDS_KEY, task_id)
        pipe.execute()
