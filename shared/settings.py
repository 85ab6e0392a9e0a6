"""Settings for every service, read from the environment (and `.env`) on first use."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Standard Webhooks' example schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
CALLBACK_RETRY_SCHEDULE_S = (5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400)
# Sentinel's own port, the one every chart and image uses.
SENTINEL_PORT = 26379
# A shorter dashboard signing key could be guessed offline from one signed cookie.
UI_SECRET_KEY_MIN_CHARS = 32


def split_commas(value: object) -> object:
    """`a, b,,c` as `["a", "b", "c"]`, so a list is easy to write in a shell."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def unprefixed(name: str) -> AliasChoices:
    """A setting read from `NAME`, the name every deployment knows it by, or `SCAN_NAME`."""
    return AliasChoices(name, f"SCAN_{name}")


# The kinds of setting, each with the bounds every setting of its kind has.
Seconds = Annotated[float, Field(gt=0)]
# 0 means none: no wait, no grace, or (for a server-side timeout) no limit.
SecondsOrZero = Annotated[float, Field(ge=0)]
OneOrMore = Annotated[int, Field(ge=1)]
# 0 means none: no limit, nothing allowed, or off, as each description says.
ZeroOrMore = Annotated[int, Field(ge=0)]
Port = Annotated[int, Field(ge=1, le=65535)]
# 0: the probe server is off.
PortOrOff = Annotated[int, Field(ge=0, le=65535)]
# A body cap below 1 KiB would refuse ordinary requests and pages.
BodyBytes = Annotated[int, Field(ge=1024)]
CommaSeparated = Annotated[list[str], NoDecode, BeforeValidator(split_commas)]


class Settings(BaseSettings):
    """All knobs of scan-outbox: `DATABASE_URL`, `REDIS_URL`, `BROKER_URL`, the rest `SCAN_*`."""

    model_config = SettingsConfigDict(
        env_prefix="SCAN_", env_file=".env", extra="ignore", populate_by_name=True
    )

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:5432/scan_outbox"),
        validation_alias=unprefixed("DATABASE_URL"),
        description="PostgreSQL (`postgresql://…`; Unix sockets via `?host=/dir`).",
    )
    database_direct_url: SecretStr | None = Field(
        default=None,
        validation_alias=unprefixed("DATABASE_DIRECT_URL"),
        description=(
            "A session connection to the same database (direct, or a pooler in session "
            "mode) for what lives in a server session: the relay leader's advisory lock "
            "and `scanctl migrate` (DDL, its lock, `CONCURRENTLY`)."
        ),
    )
    database_pool_mode: Literal["session", "transaction"] = Field(
        default="session",
        validation_alias=unprefixed("DATABASE_POOL_MODE"),
        description=(
            "`transaction` when `DATABASE_URL` is a transaction-pooling pooler (PgBouncer"
            " `pool_mode = transaction`): no settings at connection start (the statement "
            "and idle-in-transaction timeouts are set at the start of each transaction "
            "instead), no statement cache, unique names for prepared statements."
        ),
    )
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        validation_alias=unprefixed("REDIS_URL"),
        description="Redis of the safeguards (marker, locks, rate limit).",
    )
    broker_url: SecretStr | None = Field(
        default=None,
        validation_alias=unprefixed("BROKER_URL"),
        description="Redis of the Dramatiq broker.",
    )
    # Redis through Sentinel: the primary of `redis_sentinel_master` as the Sentinels say.
    redis_sentinels: CommaSeparated = Field(
        default_factory=list,
        validation_alias=unprefixed("REDIS_SENTINELS"),
        description="Redis Sentinels as `host:port,host:port` (port 26379 if left out).",
    )
    redis_sentinel_master: str = Field(
        default="mymaster",
        min_length=1,
        validation_alias=unprefixed("REDIS_SENTINEL_MASTER"),
        description="The master set the Sentinels monitor (`sentinel monitor <name> …`).",
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        validation_alias=unprefixed("REDIS_SENTINEL_PASSWORD"),
        description="The Sentinels' own password (`requirepass` in `sentinel.conf`).",
    )
    log_level: str = Field(default="INFO", description="Log level of every service.")
    log_json: bool | None = Field(
        default=None, description="`true`/`false` forces JSON lines or the human format."
    )

    # Database pool.
    db_pool_size: OneOrMore = Field(default=10, description="SQLAlchemy pool per process.")
    db_max_overflow: ZeroOrMore = Field(
        default=10, description="Extra connections above the pool under bursts."
    )
    db_pool_pre_ping: bool = Field(
        default=False,
        description=(
            "`true` tests each pooled connection before use (one to three extra round "
            "trips per checkout)."
        ),
    )
    # Limits on every database connection, so a frozen or vanished peer cannot hold locks:
    # the server ends a session idle in a transaction, a statement running too long, and
    # (keepalives) a connection whose client host is gone. 0 disables a limit.
    db_statement_timeout_s: SecondsOrZero = Field(
        default=30.0, description="Server-side `statement_timeout` on every connection (0: off)."
    )
    db_idle_in_transaction_timeout_s: SecondsOrZero = Field(
        default=15.0,
        description=(
            "Server-side `idle_in_transaction_session_timeout` (0: off): a relay frozen "
            "in the middle of a batch loses its transaction and its row locks, and "
            "another relay publishes them."
        ),
    )
    db_tcp_keepalives_idle_s: ZeroOrMore = Field(
        default=30,
        description="Silence after which the server sends TCP keepalive probes on a connection.",
    )
    db_tcp_keepalives_interval_s: ZeroOrMore = Field(
        default=10, description="Time between two TCP keepalive probes."
    )
    db_tcp_keepalives_count: ZeroOrMore = Field(
        default=3,
        description="Unanswered TCP keepalive probes after which the server closes a connection.",
    )

    # API.
    api_host: str = Field(default="127.0.0.1", description="Where `scanctl api` listens.")
    api_port: Port = Field(default=8000, description="The port `scanctl api` listens on.")
    max_body_bytes: BodyBytes = Field(
        default=64 * 1024, description="Request body cap (413 above)."
    )
    max_config_bytes: int = Field(
        default=16 * 1024, ge=16, description="A task's `config` as JSON (422 above)."
    )
    page_size_max: OneOrMore = Field(default=100, description="Largest list page.")
    export_chunk_rows: int = Field(
        default=500,
        ge=10,
        le=10_000,
        description=(
            "Tasks per read of a batch export (`GET /api/v1/batches/{id}/results`, "
            "`scanctl batches results`), each read a short query on a connection of its "
            "own; one chunk is in memory at a time."
        ),
    )
    rate_limit_per_minute: ZeroOrMore = Field(
        default=600, description="Creates per token per minute, sustained (429 above; 0: no limit)."
    )
    rate_limit_burst: OneOrMore = Field(
        default=60, description="Creates a token may send at once before the rate applies."
    )
    batch_max_tasks: OneOrMore = Field(
        default=1000,
        le=10_000,
        description=(
            "Domains one `POST /api/v1/batches` may carry (at most 10,000); the whole "
            "batch is one transaction."
        ),
    )
    batch_max_body_bytes: BodyBytes = Field(
        default=512 * 1024,
        description="Body limit of `POST /api/v1/batches` (other routes: `SCAN_MAX_BODY_BYTES`).",
    )
    wait_max_s: SecondsOrZero = Field(
        default=30.0,
        description="Longest `wait` a `GET` of a task or batch may ask for (422 above).",
    )
    wait_max_waiters: ZeroOrMore = Field(
        default=1000,
        description=(
            "Requests one API process keeps waiting at once; the next one gets 503 at once."
        ),
    )
    wait_poll_interval_s: Seconds = Field(
        default=1.0,
        description=(
            "How often an API process asks, in one statement for all its waiting "
            "requests, which of their tasks and batches have ended: the most a lost or "
            "never-sent finish hint delays an answer."
        ),
    )
    wakeup_hints: bool = Field(
        default=True,
        description=(
            "Writers publish a wake-up hint in the broker's Redis after their commit and "
            "the relays and API processes subscribe; `false`: every loop is woken by its "
            "poll alone."
        ),
    )
    wait_max_waiters_per_client: ZeroOrMore = Field(
        default=100,
        description=(
            "Requests of one user one API process keeps waiting at once; the user's next "
            "one gets 429 at once with `Retry-After` (0: no waiting for anyone)."
        ),
    )

    # Completion callbacks.
    callback_allow_http: bool = Field(
        default=False,
        description=(
            "Accept `http://` callback URLs (development and tests only); otherwise https only."
        ),
    )
    callback_timeout_s: Seconds = Field(
        default=10.0, description="Longest a callback POST may take, connection included."
    )
    callback_max_attempts: OneOrMore = Field(
        default=10,
        description=(
            "Tries before a delivery is dead (a client's `POST "
            "/api/v1/callbacks/deliveries/{id}/replay`, `scanctl callbacks replay` or the"
            " dashboard sends it again): the first, then one after each wait of "
            "`SCAN_CALLBACK_RETRY_SCHEDULE_S`."
        ),
    )
    callback_retry_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [float(wait) for wait in CALLBACK_RETRY_SCHEDULE_S],
        description=(
            "Waits after the first, second, … failed try (the last one repeats if "
            "`SCAN_CALLBACK_MAX_ATTEMPTS` asks for more), each less up to a quarter of "
            "jitter."
        ),
    )
    callback_retry_after_min_s: SecondsOrZero = Field(
        default=5.0,
        description=(
            "A receiver's `Retry-After` (seconds or an HTTP-date) replaces the scheduled "
            "wait, but never shorter than this."
        ),
    )
    callback_retry_after_max_s: Seconds = Field(
        default=86_400.0,
        description="A receiver's `Retry-After` never makes a relay wait longer than this.",
    )
    callback_batch_size: OneOrMore = Field(
        default=50,
        description=(
            "Callback POSTs a relay keeps in flight; each slot is refilled (a quarter of "
            "them at a time) as its POST ends, so a receiver that hangs holds one slot, "
            "not the others."
        ),
    )
    callback_poll_interval_s: Seconds = Field(
        default=1.0,
        description=(
            "How often a relay looks for due deliveries without being notified (retries "
            "coming due)."
        ),
    )
    callback_per_user_in_flight: OneOrMore = Field(
        default=10,
        description=(
            "Callback POSTs one relay keeps in flight for one user; the claim skips a "
            "user at the bound, so a client whose receiver stalls holds at most this many"
            " of the relay's `SCAN_CALLBACK_BATCH_SIZE` slots (with R relays, R times "
            "this in all)."
        ),
    )
    callback_per_host_in_flight: OneOrMore = Field(
        default=10,
        description=(
            "Callback POSTs one relay keeps in flight to one receiver host (port "
            "ignored), for receivers several clients share."
        ),
    )
    callback_submit_resolve_timeout_s: Seconds = Field(
        default=2.0,
        description=(
            "Longest a submit waits for its callback host's addresses, with no database "
            "connection held (and, for a batch, after the rate limit has charged it); "
            "without an answer the URL is accepted, since every delivery checks again."
        ),
    )

    # Task defaults.
    task_max_attempts: OneOrMore = Field(
        default=3, description="Runs a task may start (claims); re-dispatches do not count."
    )

    # Redis safeguards.
    redis_safeguards: bool = Field(
        default=True,
        description=(
            "`false`: no rate limit, no create/retry lock, no `task_created` marker, and "
            "the worker's existence check asks the database only."
        ),
    )
    redis_timeout_s: Seconds = Field(
        default=0.5,
        description=(
            "How long a safeguard may wait on Redis before the operation goes on without it."
        ),
    )
    marker_ttl_s: OneOrMore = Field(default=300, description="TTL of `task_created:{id}`.")
    lock_timeout_s: Seconds = Field(default=30.0, description="Expiry of a Redis lock.")
    lock_wait_s: SecondsOrZero = Field(
        default=2.0,
        description="Longest wait for a busy Redis lock (then the operation goes on unlocked).",
    )
    existence_check_attempts: OneOrMore = Field(
        default=5,
        description=(
            "Looks the worker's existence check takes at most before it drops a message "
            "whose task is not there."
        ),
    )
    existence_check_delay_s: SecondsOrZero = Field(
        default=1.0, description="The existence check's delay after its first look."
    )
    existence_check_backoff: float = Field(
        default=1.5,
        ge=1,
        description="Growth factor of the existence check's delay from one look to the next.",
    )

    # Relay.
    relay_batch_size: OneOrMore = Field(
        default=500, description="Rows claimed per relay transaction."
    )
    relay_client_window: OneOrMore = Field(
        default=64,
        description=(
            "Fewest messages a client's lane (interactive creates, or batches) may have "
            "in the broker, published but not yet taken by a worker; the rest of its "
            "backlog waits in the outbox."
        ),
    )
    relay_client_window_max: OneOrMore = Field(
        default=4096,
        description="Most messages a client's lane may have in the broker, whatever the pace.",
    )
    relay_window_s: Seconds = Field(
        default=0.25,
        description=(
            "Seconds of work, at the pace the relay's messages are being taken, that the "
            "broker may hold across all clients with a backlog, shared between their "
            "lanes: about how long another client's new scan waits behind them."
        ),
    )
    relay_window_poll_s: Seconds = Field(
        default=0.02,
        description=(
            "While a client has more due messages than its window holds, how soon a relay"
            " looks again for the room workers made (they do not tell it)."
        ),
    )
    relay_poll_interval_s: Seconds = Field(
        default=1.0,
        description=(
            "Fallback poll when no wake-up hint arrives (and for rows whose "
            "`available_at` has come): the most a lost hint costs."
        ),
    )
    relay_busy_gap_s: SecondsOrZero = Field(
        default=0.01,
        description=(
            "After a cycle that found rows, the least time from its start to the next "
            "cycle's start: while creates keep coming, the wake-up hints of that gap (one"
            " per commit) are gathered into one claim instead of a claim transaction "
            "each."
        ),
    )
    relay_backoff_base_s: Seconds = Field(
        default=1.0, description="First delay of a publish retry's backoff."
    )
    relay_backoff_max_s: Seconds = Field(
        default=300.0, description="Cap of a publish retry's backoff."
    )
    relay_listen_reconnect_max_s: Seconds = Field(
        default=10.0,
        description="Backoff cap of the relay's wake-up hint subscription when Redis drops it.",
    )
    relay_broker_timeout_s: Seconds = Field(
        default=5.0, description="Longest wait on one Redis call from the relay."
    )
    relay_shutdown_timeout_s: Seconds = Field(
        default=20.0,
        description="On SIGTERM, longest wait for the batch in hand (then it is rolled back).",
    )
    relay_health_host: str = Field(
        default="127.0.0.1",
        description="Where the relay's `/livez`, `/readyz` and `/metrics` listen.",
    )
    relay_health_port: PortOrOff = Field(
        default=8001,
        description="The port of the relay's `/livez`, `/readyz` and `/metrics` (0: off).",
    )
    relay_livez_max_age_s: Seconds = Field(
        default=60.0, description="`/livez` fails once the relay loop has not turned for this long."
    )
    relay_leader_check_interval_s: Seconds = Field(
        default=5.0, description="How often each relay takes or confirms the lead."
    )
    relay_redispatch_interval_s: Seconds = Field(
        default=5.0,
        description=(
            "How often the leader sends again tasks whose lease expired (and runs the "
            "last-resort sweep), and makes dead the deliveries whose last try recorded no "
            "outcome."
        ),
    )
    relay_redispatch_batch_size: OneOrMore = Field(
        default=100, description="Tasks per re-dispatch transaction."
    )
    relay_prune_interval_s: Seconds = Field(
        default=300.0,
        description=(
            "How often the leader prunes published outbox rows and delivered callbacks older than "
            "`SCAN_OUTBOX_RETENTION_S`."
        ),
    )
    relay_prune_batch_size: OneOrMore = Field(
        default=1000, description="Published outbox rows pruned per transaction."
    )
    relay_gauges_interval_s: Seconds = Field(
        default=5.0,
        description=(
            "Refresh of the outbox gauges by the leader, and of the callbacks gauges by every "
            "relay."
        ),
    )
    outbox_retention_s: Seconds = Field(
        default=7 * 24 * 3600.0, description="Age after which a published outbox row is pruned."
    )

    # Recovery: the leader knows where each queued message is, instead of guessing by age.
    relay_broker_check_interval_s: Seconds = Field(
        default=2.0,
        description=(
            "How often the leader checks the broker epoch, requeues dead consumers' "
            "messages and looks for queued tasks whose message is gone."
        ),
    )
    relay_broker_check_batch_size: OneOrMore = Field(
        default=2000, description="Queued tasks checked per page (ten pages per check at most)."
    )
    queued_check_floor_s: SecondsOrZero = Field(
        default=5.0,
        description=(
            "Queued tasks younger than this are not checked yet (except in a full walk "
            "after a broker restart or a change of leader)."
        ),
    )
    broker_heartbeat_timeout_s: Seconds = Field(
        default=15.0,
        description=(
            "A worker silent this long is dead and its fetched messages go back to the queue."
        ),
    )

    # Worker.
    queue_name: str = Field(
        default="scans", description="Dramatiq queue (Redis list `dramatiq:<name>`)."
    )
    worker_lease_s: Seconds = Field(
        default=30.0, description="Lease a claim takes, renewed every third."
    )
    worker_claim_retry_s: SecondsOrZero = Field(
        default=30.0,
        description=(
            "How long a claim keeps trying through a database outage (backoff from 0.25 s"
            " to 5 s) before its message goes to dead letters; the leader then sends the "
            "task again once the database answers."
        ),
    )
    target_lock_timeout_s: Seconds = Field(
        default=2.0,
        description=(
            "Longest wait for a target's claim lock; a timeout defers the task like the "
            "politeness limit does."
        ),
    )
    retry_backoff_base_s: Seconds = Field(
        default=5.0,
        description="First delay before re-running a task after an infrastructure error.",
    )
    retry_backoff_max_s: Seconds = Field(
        default=300.0,
        description="Cap of the delay before re-running a task after an infrastructure error.",
    )
    per_target_concurrency: OneOrMore = Field(
        default=2, description="Scans of one domain running at once, across all workers."
    )
    politeness_delay_s: Seconds = Field(
        default=5.0,
        description=(
            "Delay before a deferred scan is tried again, times a random factor from 1 to 1.5."
        ),
    )
    worker_idle_poll_ms: OneOrMore = Field(
        default=20,
        le=60_000,
        description=(
            "Longest sleep of a worker's consumer between fetches: after its blocking "
            "wait on the queue ended empty, and while the messages it holds fill its prefetch."
        ),
    )
    worker_concurrency: OneOrMore = Field(
        default=256,
        le=4096,
        description=(
            "Scans in flight per worker process, as coroutines on one event loop "
            "(`scanctl worker --concurrency`; `--threads` is refused)."
        ),
    )
    worker_prefetch: ZeroOrMore = Field(
        default=64,
        description=(
            "Messages a worker process fetches beyond those it runs, so one process does "
            "not hoard the queue; unstarted ones are handed back at stop."
        ),
    )
    worker_claim_batch: OneOrMore = Field(
        default=64,
        description=(
            "Most tasks one claim transaction takes (up to 4 such transactions in flight "
            "per process); claims that start while they are busy go together in the next,"
            " each task under a lease token of its own and within its target's politeness"
            " limit."
        ),
    )
    worker_completion_batch: OneOrMore = Field(
        default=256,
        description=(
            "Most runs' ends (final writes) one statement writes; ends arriving while a "
            "write is in flight go together in the next, each still fenced by its lease "
            "token."
        ),
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="Where the workers' `/metrics`, `/livez` and `/readyz` listen.",
    )
    worker_metrics_port: PortOrOff = Field(
        default=9191,
        description="The port of the workers' `/metrics`, `/livez` and `/readyz` (0: off).",
    )
    worker_progress_max_age_s: Seconds = Field(
        default=30.0,
        description=(
            "The worker's `/livez` (and `/readyz`) answer 503 once a worker process's "
            "event loop has not ticked, or one of its consumers has not turned outside a "
            "broker call, for this long."
        ),
    )

    # Recurring schedules.
    schedule_max_per_client: ZeroOrMore = Field(
        default=100, description="Schedules one user may hold (409 beyond; 0: none)."
    )
    schedule_max_domains: OneOrMore = Field(
        default=100,
        description=(
            "Domains one schedule scans at each run (422 above): a run is one batch, "
            "written in the firing transaction, so this bounds the transaction that holds"
            " the claimed schedules' locks."
        ),
    )
    schedule_min_interval_s: OneOrMore = Field(
        default=60,
        description=(
            "Shortest time between two ticks: an `interval_s`, or the closest two of a "
            "cron expression's next ten ticks (422 below)."
        ),
    )
    schedule_poll_interval_s: Seconds = Field(
        default=1.0,
        description=(
            "How often each relay claims due schedules, with a random quarter of it added"
            " to each look so that relays take turns instead of the one whose timer runs "
            "ahead taking every tick."
        ),
    )
    schedule_fire_batch_size: OneOrMore = Field(
        default=50,
        description=(
            "Due schedules one firing transaction claims; a relay claims again at once "
            "while claims come back full."
        ),
    )
    schedule_misfire_grace_s: SecondsOrZero = Field(
        default=30.0,
        description=(
            "A lone due tick fired later than this counts as missed, and the schedule's "
            "`missed` policy decides (`run_once`: it runs; `skip`: it does not)."
        ),
    )
    schedule_report_interval_s: Seconds = Field(
        default=2.0,
        description=(
            "How often each relay compares the runs whose batch has ended with the "
            "previous run (the run's `changes`, and `changes` callbacks)."
        ),
    )

    # Operations: orphan detection, retention and the health verdict.
    queued_stale_s: Seconds = Field(
        default=600.0,
        description=(
            "Last resort: a task queued this long whose message nobody can locate (no "
            "broker id recorded) is sent again, never failed and never charged an "
            "attempt."
        ),
    )
    idempotency_retention_s: Seconds = Field(
        default=24 * 3600.0,
        description="`scanctl full-cleanup` clears idempotency keys of tasks older than this.",
    )
    health_max_outbox_age_s: Seconds = Field(
        default=60.0,
        description=(
            "Health: oldest due, unpublished outbox row allowed (rows not due yet do not count)."
        ),
    )
    health_max_dead_rows: ZeroOrMore = Field(
        default=0, description="Health: dead outbox rows allowed."
    )

    # Operations dashboard (/ui).
    ui_secret_key: SecretStr | None = Field(
        default=None,
        description="Signs dashboard sessions (32+ characters).",
    )
    ui_session_ttl_s: int = Field(
        default=8 * 3600, ge=60, description="Dashboard session lifetime."
    )
    ui_cookie_secure: bool | None = Field(
        default=None,
        description=(
            "`true`/`false` forces the cookies' `Secure` flag (behind a proxy that does "
            "not forward the scheme)."
        ),
    )
    ui_refresh_s: ZeroOrMore = Field(default=10, description="Overview auto-refresh (0: off).")

    # `scanctl dev`.
    dev_stop_grace_s: SecondsOrZero = Field(
        default=30.0,
        description=(
            "On Ctrl-C, SIGTERM, SIGHUP or the end of one service, `scanctl dev` sends "
            "each service SIGTERM and waits this long for every process of its tree "
            "(Dramatiq's worker processes included) to exit; then the service's process "
            "group and every descendant seen get SIGKILL (a second Ctrl-C skips the "
            "wait)."
        ),
    )

    # Scanner.
    scanner: str = Field(
        default="worker_service.scanner:scan_domain",
        description=(
            "The scan a worker runs, as `module:function`: an async callable `(domain, "
            "config, settings) -> result dict`."
        ),
    )
    fetch_timeout_s: Seconds = Field(
        default=10.0, description="Time cap of one HTTP hop, body included."
    )
    dns_timeout_s: Seconds = Field(
        default=5.0,
        description=(
            "Time cap of the DNS queries (a scan's, and a callback delivery's host lookup)."
        ),
    )
    fetch_max_body_bytes: BodyBytes = Field(
        default=1024 * 1024, description="Home-page bytes read at most."
    )
    max_redirects: ZeroOrMore = Field(default=5, description="Redirects followed.")
    schemes: CommaSeparated = Field(
        default_factory=lambda: ["https", "http"],
        description="Schemes fetched, each reported in its own section.",
    )
    http_port: Port = Field(default=80, description="The port scans fetch `http://` pages from.")
    https_port: Port = Field(default=443, description="The port scans fetch `https://` pages from.")
    allow_private: bool = Field(
        default=False, description="Let scans reach private and loopback addresses (tests only)."
    )
    resolver_overrides: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="`name=ip,other=ip`: answer these names (and their subdomains) without DNS.",
    )
    total_timeout_s: Seconds = Field(
        default=60.0, description="Time cap of one whole scan (DNS and every hop of both fetches)."
    )
    rules_budget_s: Seconds = Field(
        default=2.0,
        description=(
            "Time one scan's keyword and regex rules may take, on a rule thread (never "
            "the event loop); rules left when it runs out get a `rule_not_applied` "
            "finding."
        ),
    )
    dns_nameservers: CommaSeparated = Field(
        default_factory=list,
        description=(
            "`ip`, `ip:port` or `[ipv6]:port`, comma-separated: ask only these (scans, "
            "and callback hosts at submit and delivery)."
        ),
    )
    tls_ca_bundle: str | None = Field(
        default=None, description="PEM file of the CAs HTTPS certificates must chain to."
    )
    tls_accept_untrusted: bool = Field(
        default=False,
        description=(
            "Fetch over an untrusted certificate anyway and report it as a `tls_untrusted` finding."
        ),
    )

    @field_validator("schemes")
    @classmethod
    def _known_schemes(cls, value: list[str]) -> list[str]:
        unknown = [scheme for scheme in value if scheme not in ("http", "https")]
        if unknown or not value:
            raise ValueError("schemes must be a non-empty list of 'http' and 'https'")
        return value

    @field_validator("callback_retry_schedule_s", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [float(part) for part in value.split(",") if part.strip()]
        return value

    @field_validator("callback_retry_schedule_s")
    @classmethod
    def _positive_waits(cls, value: list[float]) -> list[float]:
        if not value or any(wait <= 0 for wait in value):
            raise ValueError("must be a non-empty list of positive waits in seconds")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        parse_sentinels(value)
        return value

    @field_validator("dns_nameservers")
    @classmethod
    def _nameserver_addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            split_host_port(entry, 53)
        return value

    @field_validator("resolver_overrides", mode="before")
    @classmethod
    def _parse_overrides(cls, value: object) -> object:
        """Accept `name=ip,other=ip` so the variable is easy to write in a shell."""
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("expected name=address pairs separated by commas")
            return {name.strip().lower().rstrip("."): addr.strip() for name, addr in pairs}
        return value

    @field_validator("ui_secret_key")
    @classmethod
    def _long_enough_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < UI_SECRET_KEY_MIN_CHARS:
            raise ValueError(f"must be at least {UI_SECRET_KEY_MIN_CHARS} characters")
        return value

    @property
    def effective_broker_url(self) -> str:
        return (self.broker_url or self.redis_url).get_secret_value()

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the asyncpg driver SQLAlchemy needs."""
        return to_sqlalchemy_url(self.database_url.get_secret_value())

    @property
    def asyncpg_dsn(self) -> str:
        """The database URL in the plain form asyncpg's `connect` takes."""
        return to_asyncpg_dsn(self.database_url.get_secret_value())

    @property
    def transaction_pooled(self) -> bool:
        """DATABASE_URL leads to a transaction-pooling pooler: no session state survives a
        transaction there (startup settings, LISTEN, session locks, named statements)."""
        return self.database_pool_mode == "transaction"

    @property
    def has_session_url(self) -> bool:
        """A URL whose connections are whole server sessions exists (direct, or pooled in
        session mode): LISTEN and the leader's lock can work."""
        return self.database_direct_url is not None or not self.transaction_pooled

    @property
    def direct_url(self) -> str:
        """DATABASE_DIRECT_URL, else DATABASE_URL: the URL for sessions (`has_session_url`
        says whether it gives real ones)."""
        return (self.database_direct_url or self.database_url).get_secret_value()

    @property
    def direct_sqlalchemy_url(self) -> str:
        return to_sqlalchemy_url(self.direct_url)

    @property
    def direct_asyncpg_dsn(self) -> str:
        return to_asyncpg_dsn(self.direct_url)


def to_sqlalchemy_url(url: str) -> str:
    _scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("DATABASE_URL must look like postgresql://user:password@host/db")
    return f"postgresql+asyncpg://{rest}"


def split_host_port(entry: str, default_port: int) -> tuple[str, int]:
    """`ip`, `ip:port` or `[ipv6]:port` as (ip, port); ValueError for anything else."""
    host, port = entry.strip(), default_port
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = int(rest.removeprefix(":")) if rest else default_port
    elif host.count(":") == 1:
        host, _, raw_port = host.partition(":")
        port = int(raw_port)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {entry!r}")
    return host, port


def parse_sentinels(entries: list[str]) -> tuple[tuple[str, int], ...]:
    """`host`, `host:port` or `[ipv6]:port` entries as (host, port); ValueError otherwise."""
    parsed = []
    for entry in entries:
        host, port = entry.strip(), SENTINEL_PORT
        if host.startswith("["):
            host, _, rest = host[1:].partition("]")
            port = int(rest.removeprefix(":")) if rest else SENTINEL_PORT
        elif host.count(":") == 1:
            host, _, raw_port = host.partition(":")
            port = int(raw_port)
        if not host or not 0 < port < 65536:
            raise ValueError(f"expected host:port, got {entry!r}")
        parsed.append((host, port))
    return tuple(parsed)


def to_asyncpg_dsn(url: str) -> str:
    _scheme, _sep, rest = url.partition("://")
    return f"postgresql://{rest}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once on first call."""
    return Settings()
