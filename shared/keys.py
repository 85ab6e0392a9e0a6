"""Every name shared between services: queues, actors, channels, Redis key prefixes."""

from __future__ import annotations

SCAN_ACTOR = "scan_domain"
KNOWN_ACTORS = frozenset({SCAN_ACTOR})

# Redis pub/sub channels of the wake-up hints, published after a commit (shared/wakeups.py):
# outbox rows due now; tasks that ended ("task_id,batch_id" joined by ";"); deliveries due.
WAKE_OUTBOX_CHANNEL = "scan-outbox:wake:outbox"
WAKE_FINISHED_CHANNEL = "scan-outbox:wake:finished"
WAKE_CALLBACKS_CHANNEL = "scan-outbox:wake:callbacks"

# Redis safeguards (secondary: they may vanish without harm).
TASK_CREATED_MARKER = "task_created:{task_id}"
CREATE_LOCK = "lock:create:{user_id}:{key}"
TASK_LOCK = "lock:task:{task_id}"
# Per-token create rate limit: the theoretical arrival time of the next create (GCRA).
CREATE_RATE = "ratelimit:create:{user_id}"
# SCAN patterns for operator cleanups.
TASK_CREATED_MARKER_PATTERN = TASK_CREATED_MARKER.format(task_id="*")
LOCK_PATTERN = "lock:*"


def task_created_marker(task_id: object) -> str:
    return TASK_CREATED_MARKER.format(task_id=task_id)


def create_lock(user_id: int, idempotency_key: str) -> str:
    return CREATE_LOCK.format(user_id=user_id, key=idempotency_key)


def task_lock(task_id: object) -> str:
    return TASK_LOCK.format(task_id=task_id)


def create_rate(user_id: int) -> str:
    return CREATE_RATE.format(user_id=user_id)


# Class id of the transaction-scoped advisory lock a claim takes on its target
# domain (the two-int key space, apart from any single-bigint lock).
POLITENESS_LOCK_CLASS = 0x5C0A

# Session-level advisory lock (single-bigint key space) held by the one relay
# that runs the maintenance jobs.
RELAY_LEADER_LOCK = 0x5C0A_1EAD


# The prefix of the application_name every relay connection that sets one shows in
# pg_stat_activity (its leader-election and LISTEN connections); the dashboard finds
# relays by it.
RELAY_APPLICATION_NAME_PREFIX = "scan-outbox-relay"
# Every relay keeps one election connection (it holds RELAY_LEADER_LOCK only on the
# leader), so counting these counts running relays.
RELAY_ELECTION_APPLICATION_NAME = f"{RELAY_APPLICATION_NAME_PREFIX}-election"

# Dramatiq's Redis broker stamps every broker client's id here (ZSET: id -> last command,
# epoch ms) on each command; worker processes put this prefix in their broker id, so
# the dashboard can tell them from relays publishing.
BROKER_HEARTBEATS_KEY = "dramatiq:__heartbeats__"
WORKER_BROKER_ID_PREFIX = "scan-outbox-worker"


def worker_broker_id(hostname: str, pid: int, nonce: str) -> str:
    """`scan-outbox-worker:{hostname}:{pid}:{nonce}`: unique per process, readable by people."""
    return f"{WORKER_BROKER_ID_PREFIX}:{hostname}:{pid}:{nonce}"


def broker_queue_key(queue_name: str) -> str:
    """The Redis LIST Dramatiq's Redis broker keeps a queue's message ids in."""
    return f"dramatiq:{queue_name}"


def broker_messages_key(queue_name: str) -> str:
    """The Redis HASH (id -> message) that holds a queue's message from enqueue to ack,
    whether it waits in the queue or sits in a consumer's prefetch."""
    return f"{broker_queue_key(queue_name)}.msgs"


# Written by the relay leader into the broker's Redis and remembered in the database: when
# it vanishes or changes, the broker lost its data (see relay_service/whereabouts.py).
BROKER_EPOCH_KEY = "scan-outbox:broker-epoch"
