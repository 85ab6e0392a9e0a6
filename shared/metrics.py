"""Every Prometheus metric the services export, in one place so names stay consistent.

One prefix, base units, `_total` on counters, and no high-cardinality labels
(never a task or message id). Each process exposes the ones it updates.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREFIX = "scan_outbox"

# Latencies from milliseconds to a minute.
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# --- API ---------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests_total",
    "HTTP requests by route template and status",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=LATENCY_BUCKETS_S,
)
TASKS_CREATED = Counter(f"{PREFIX}_tasks_created_total", "Tasks committed by the create path")
API_WAITERS = Gauge(f"{PREFIX}_api_waiters", "Requests of this API process waiting (`wait`)")
API_WAITERS_REFUSED = Counter(
    f"{PREFIX}_api_waiters_refused_total",
    "Requests with `wait` refused: too many waiting in the process, or of the same user",
    ["limit"],
)
WAKEUP_HINTS_FAILED = Counter(
    f"{PREFIX}_wakeup_hints_failed_total",
    "Wake-up hints that could not be sent (each costs a poll interval at most, never a task)",
)
SAFEGUARD_FAILURES = Counter(
    f"{PREFIX}_safeguard_failures_total",
    "Redis safeguard operations that failed (the request went on without them)",
    ["safeguard"],
)

# --- relay -------------------------------------------------------------------
OUTBOX_BACKLOG = Gauge(f"{PREFIX}_outbox_backlog", "Unpublished, not dead outbox rows")
OUTBOX_OLDEST_AGE = Gauge(
    f"{PREFIX}_outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished row"
)
CLIENT_BACKLOG = Gauge(
    f"{PREFIX}_client_backlog",
    "Unpublished outbox rows of the clients with the longest backlogs, by lane",
    ["client", "lane"],
)
CLIENT_IN_BROKER = Gauge(
    f"{PREFIX}_client_in_broker",
    "Messages of those clients in the broker, not yet taken by a worker (their window's use)",
    ["client", "lane"],
)
RELAY_CLIENT_WINDOW = Gauge(
    f"{PREFIX}_relay_client_window",
    "Messages this relay lets each client lane with a backlog have in the broker",
)
OUTBOX_DEAD = Gauge(f"{PREFIX}_outbox_dead", "Outbox rows given up as unpublishable")
MESSAGES_PUBLISHED = Counter(f"{PREFIX}_messages_published_total", "Outbox rows published")
PUBLISH_FAILURES = Counter(f"{PREFIX}_publish_failures_total", "Outbox publish failures", ["kind"])
COMMIT_TO_PUBLISH = Histogram(
    f"{PREFIX}_commit_to_publish_seconds",
    "From outbox row creation to its publication",
    buckets=LATENCY_BUCKETS_S,
)
RELAY_LEADER = Gauge(f"{PREFIX}_relay_leader", "1 while this relay runs the maintenance jobs")
TASKS_REDISPATCHED = Counter(
    f"{PREFIX}_tasks_redispatched_total", "Tasks sent again by maintenance", ["reason"]
)
OUTBOX_PRUNED = Counter(f"{PREFIX}_outbox_pruned_total", "Published outbox rows pruned")
# Completion callbacks: every relay delivers; the gauges are the whole table's, so take
# max() over relays.
CALLBACKS_PENDING = Gauge(f"{PREFIX}_callbacks_pending", "Deliveries not yet delivered nor dead")
CALLBACKS_OLDEST_AGE = Gauge(
    f"{PREFIX}_callbacks_oldest_pending_age_seconds", "Age of the oldest pending delivery"
)
CALLBACKS_DEAD = Gauge(f"{PREFIX}_callbacks_dead", "Deliveries given up after their last try")
CALLBACKS_DELIVERED = Counter(f"{PREFIX}_callbacks_delivered_total", "Callbacks answered 2xx")
CALLBACK_FAILURES = Counter(
    f"{PREFIX}_callback_failures_total",
    "Failed callback tries by HTTP status code, or timeout, connection or refused (SSRF guard)",
    ["status"],
)

# --- worker ------------------------------------------------------------------
TASKS_FINISHED = Counter(f"{PREFIX}_tasks_finished_total", "Task runs by outcome", ["outcome"])
SCAN_DURATION = Histogram(
    f"{PREFIX}_scan_duration_seconds", "Time spent scanning one task", buckets=LATENCY_BUCKETS_S
)
COMMIT_TO_START = Histogram(
    f"{PREFIX}_commit_to_start_seconds",
    "From task creation to a worker starting it",
    buckets=LATENCY_BUCKETS_S,
)
EXISTENCE_CHECK_RETRIES = Counter(
    f"{PREFIX}_existence_check_retries_total",
    "Times the worker's existence check had to retry (by design: never)",
)
TASKS_DEFERRED = Counter(
    f"{PREFIX}_tasks_deferred_total", "Messages deferred through the outbox", ["reason"]
)
# What the worker's /metrics port exposes: worker processes import this whole module,
# and the API and relay metrics would only show there as zeros.
WORKER_METRICS = (
    TASKS_FINISHED,
    SCAN_DURATION,
    COMMIT_TO_START,
    EXISTENCE_CHECK_RETRIES,
    TASKS_DEFERRED,
    SAFEGUARD_FAILURES,
)
# Recurring schedules: every relay fires, so sum over relays.
SCHEDULE_TICKS = Counter(
    f"{PREFIX}_schedule_ticks_total",
    "Schedule claims by outcome (fired, or the reason no run was made)",
    ["outcome"],
)
SCHEDULE_LATENESS = Histogram(
    f"{PREFIX}_schedule_lateness_seconds",
    "From a tick to the firing transaction that made its run",
    buckets=LATENCY_BUCKETS_S,
)
