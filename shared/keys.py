"""Every name shared between services: queues, actors, channels, Redis key prefixes."""

from __future__ import annotations

SCAN_ACTOR = "scan_domain"
KNOWN_ACTORS = frozenset({SCAN_ACTOR})

# PostgreSQL channel the create transaction notifies and the relay listens on.
OUTBOX_CHANNEL = "scan_outbox"

# Redis safeguards (secondary: they may vanish without harm).
TASK_CREATED_MARKER = "task_created:{task_id}"
CREATE_LOCK = "lock:create:{user_id}:{key}"
TASK_LOCK = "lock:task:{task_id}"


def task_created_marker(task_id: object) -> str:
    return TASK_CREATED_MARKER.format(task_id=task_id)


def broker_queue_key(queue_name: str) -> str:
    """The Redis LIST Dramatiq's Redis broker keeps a queue's message ids in."""
    return f"dramatiq:{queue_name}"
