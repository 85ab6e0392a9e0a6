"""Settings for every service, read from the environment (and `.env`) on first use."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Standard Webhooks' example schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
CALLBACK_RETRY_SCHEDULE_S = (5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400)
# Sentinel's own port, the one every chart and image uses.
SENTINEL_PORT = 26379
# A shorter dashboard signing key could be guessed offline from one signed cookie.
UI_SECRET_KEY_MIN_CHARS = 32


class Settings(BaseSettings):
    """All knobs of scan-outbox: `DATABASE_URL`, `REDIS_URL`, `BROKER_URL`, the rest `SCAN_*`."""

    model_config = SettingsConfigDict(
        env_prefix="SCAN_", env_file=".env", extra="ignore", populate_by_name=True
    )

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:5432/scan_outbox"),
        validation_alias=AliasChoices("DATABASE_URL", "SCAN_DATABASE_URL"),
    )
    database_direct_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_DIRECT_URL", "SCAN_DATABASE_DIRECT_URL"),
        description="A session connection to the same database, for what needs one: LISTEN, "
        "the relay leader's advisory lock, migrations. Defaults to DATABASE_URL.",
    )
    database_pool_mode: Literal["session", "transaction"] = Field(
        default="session",
        validation_alias=AliasChoices("DATABASE_POOL_MODE", "SCAN_DATABASE_POOL_MODE"),
        description="`transaction`: DATABASE_URL is a transaction-pooling pooler (PgBouncer's "
        "`pool_mode = transaction`).",
    )
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        validation_alias=AliasChoices("REDIS_URL", "SCAN_REDIS_URL"),
    )
    broker_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("BROKER_URL", "SCAN_BROKER_URL"),
        description="Redis URL of the Dramatiq broker; defaults to REDIS_URL.",
    )
    # Redis through Sentinel: the primary of `redis_sentinel_master` as the Sentinels say.
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("REDIS_SENTINELS", "SCAN_REDIS_SENTINELS"),
        description="Sentinels as host:port,host:port; set, every Redis client finds the primary "
        "through them, and REDIS_URL/BROKER_URL give only credentials, db and TLS.",
    )
    redis_sentinel_master: str = Field(
        default="mymaster",
        min_length=1,
        validation_alias=AliasChoices("REDIS_SENTINEL_MASTER", "SCAN_REDIS_SENTINEL_MASTER"),
        description="The master set the Sentinels monitor (the Bitnami chart's default name).",
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_SENTINEL_PASSWORD", "SCAN_REDIS_SENTINEL_PASSWORD"),
        description="The Sentinels' own password (requirepass in sentinel.conf), if any.",
    )
    log_level: str = "INFO"
    log_json: bool | None = None

    # Database pool.
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_pre_ping: bool = Field(
        default=False,
        description="Test each pooled connection before use (a round trip or three per checkout).",
    )
    # Limits on every database connection, so a frozen or vanished peer cannot hold locks:
    # the server ends a session idle in a transaction, a statement running too long, and
    # (keepalives) a connection whose client host is gone. 0 disables a limit.
    db_statement_timeout_s: float = Field(default=30.0, ge=0)
    db_idle_in_transaction_timeout_s: float = Field(
        default=15.0,
        ge=0,
        description="Ends a session idle inside a transaction (a frozen relay holding its batch).",
    )
    db_tcp_keepalives_idle_s: int = Field(default=30, ge=0)
    db_tcp_keepalives_interval_s: int = Field(default=10, ge=0)
    db_tcp_keepalives_count: int = Field(default=3, ge=0)

    # API.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_config_bytes: int = Field(default=16 * 1024, ge=16)
    page_size_max: int = Field(default=100, ge=1)
    export_chunk_rows: int = Field(
        default=500,
        ge=10,
        le=10_000,
        description="Tasks per read of a batch export (each chunk is in memory while written).",
    )
    rate_limit_per_minute: int = Field(
        default=600, ge=0, description="Creates per token per minute, sustained; 0: no limit."
    )
    rate_limit_burst: int = Field(
        default=60, ge=1, description="Creates a token may send at once before the rate applies."
    )
    batch_max_tasks: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Domains one POST /api/v1/batches may carry (one transaction for all).",
    )
    batch_max_body_bytes: int = Field(
        default=512 * 1024,
        ge=1024,
        description="Body limit of POST /api/v1/batches; a batch of 1,000 253-character "
        "domains with a 16 KB config is 292,166 bytes.",
    )
    wait_max_s: float = Field(
        default=30.0, ge=0, description="Longest `wait` a GET of a task or batch may ask for."
    )
    wait_max_waiters: int = Field(
        default=1000,
        ge=0,
        description="Requests one API process keeps waiting at once; over it, 503 at once.",
    )
    wait_poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often an API process asks, in one statement, which waited tasks "
        "and batches have ended (the bound on a lost finish hint).",
    )
    wakeup_hints: bool = Field(
        default=True,
        description="Send and take wake-up hints through the broker's Redis; false: every "
        "loop is woken by its poll alone.",
    )
    wait_max_waiters_per_client: int = Field(
        default=100,
        ge=0,
        description="Requests of one user one API process keeps waiting at once; over it, "
        "429 at once: at the defaults, ten users always find room.",
    )

    # Completion callbacks.
    callback_allow_http: bool = Field(
        default=False, description="Accept http:// callback URLs (development and tests only)."
    )
    callback_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest a callback POST may take, connect included."
    )
    callback_max_attempts: int = Field(
        default=10,
        ge=1,
        description="Tries before a delivery is dead: the first and one after each wait of "
        "SCAN_CALLBACK_RETRY_SCHEDULE_S.",
    )
    callback_retry_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [float(wait) for wait in CALLBACK_RETRY_SCHEDULE_S],
        description="Waits after the first, second, … failed try (the last repeats), less up "
        "to a quarter of jitter: Standard Webhooks' example, 75.6 hours in all.",
    )
    callback_retry_after_min_s: float = Field(
        default=5.0,
        ge=0,
        description="A receiver's Retry-After shorter than this waits this long instead.",
    )
    callback_retry_after_max_s: float = Field(
        default=86_400.0,
        gt=0,
        description="A receiver's Retry-After longer than this waits this long instead.",
    )
    callback_batch_size: int = Field(
        default=50, ge=1, description="Callback POSTs a relay keeps in flight at once."
    )
    callback_poll_interval_s: float = Field(
        default=1.0, gt=0, description="How often a relay looks for due deliveries un-notified."
    )
    callback_per_user_in_flight: int = Field(
        default=10,
        ge=1,
        description="Callback POSTs one relay keeps in flight for one user at most, so one "
        "client's stalled receiver leaves the other slots to the others.",
    )
    callback_per_host_in_flight: int = Field(
        default=10,
        ge=1,
        description="Callback POSTs one relay keeps in flight to one receiver host at most.",
    )
    callback_submit_resolve_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="Longest a submit waits for its callback host's addresses (no database "
        "connection held meanwhile); without an answer the URL is accepted.",
    )

    # Task defaults.
    task_max_attempts: int = Field(default=3, ge=1)

    # Redis safeguards.
    redis_safeguards: bool = Field(
        default=True,
        description="False: no rate limit, create/retry lock, created marker or marker check.",
    )
    redis_timeout_s: float = Field(default=0.5, gt=0)
    marker_ttl_s: int = Field(default=300, ge=1)
    lock_timeout_s: float = Field(default=30.0, gt=0)
    lock_wait_s: float = Field(default=2.0, ge=0)
    existence_check_attempts: int = Field(default=5, ge=1)
    existence_check_delay_s: float = Field(default=1.0, ge=0)
    existence_check_backoff: float = Field(default=1.5, ge=1)

    # Relay.
    relay_batch_size: int = Field(default=500, ge=1)
    relay_client_window: int = Field(
        default=64,
        ge=1,
        description="Fewest messages each client may have in the broker per lane (interactive, "
        "batch); the rest wait in the outbox and go out in turns across clients as workers "
        "take them.",
    )
    relay_client_window_max: int = Field(
        default=4096,
        ge=1,
        description="Most messages a client's lane may have in the broker (its Redis memory: "
        "about 700 bytes a message).",
    )
    relay_window_s: float = Field(
        default=0.25,
        gt=0,
        description="Seconds of work, at the pace workers take messages, that the broker may "
        "hold across all clients with a backlog: about the longest another client's new "
        "scan waits behind them.",
    )
    relay_window_poll_s: float = Field(
        default=0.02,
        gt=0,
        description="While a client has more due messages than its window, how soon a relay "
        "looks again for room the workers made.",
    )
    relay_poll_interval_s: float = Field(default=1.0, gt=0)
    relay_busy_gap_s: float = Field(
        default=0.01,
        ge=0,
        description="After a cycle that found rows, the least time from its start to the "
        "next one's: wake-up hints arriving meanwhile are gathered into one claim.",
    )
    relay_backoff_base_s: float = Field(default=1.0, gt=0)
    relay_backoff_max_s: float = Field(default=300.0, gt=0)
    relay_listen_reconnect_max_s: float = Field(default=10.0, gt=0)
    relay_broker_timeout_s: float = Field(default=5.0, gt=0)
    relay_shutdown_timeout_s: float = Field(default=20.0, gt=0)
    relay_health_host: str = "127.0.0.1"
    relay_health_port: int = Field(default=8001, ge=0, le=65535, description="0 disables it.")
    relay_livez_max_age_s: float = Field(default=60.0, gt=0)
    relay_leader_check_interval_s: float = Field(default=5.0, gt=0)
    relay_redispatch_interval_s: float = Field(
        default=5.0, gt=0, description="How often the leader re-dispatches expired leases."
    )
    relay_redispatch_batch_size: int = Field(default=100, ge=1)
    relay_prune_interval_s: float = Field(default=300.0, gt=0)
    relay_prune_batch_size: int = Field(default=1000, ge=1)
    relay_gauges_interval_s: float = Field(default=5.0, gt=0)
    outbox_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)

    # Recovery: the leader knows where each queued message is, instead of guessing by age.
    relay_broker_check_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="How often the leader checks the broker epoch, requeues dead consumers' "
        "messages and looks for queued tasks whose message is gone.",
    )
    relay_broker_check_batch_size: int = Field(
        default=2000, ge=1, description="Queued tasks whose message the leader checks per cycle."
    )
    queued_check_floor_s: float = Field(
        default=5.0, ge=0, description="Queued tasks younger than this are not checked yet."
    )
    broker_heartbeat_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="A worker silent this long is dead: its fetched messages go back to the queue.",
    )

    # Worker.
    queue_name: str = "scans"
    worker_lease_s: float = Field(
        default=30.0, gt=0, description="Renewed every third; a dead worker's scans rerun after it."
    )
    worker_claim_retry_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a claim keeps trying through a database outage before its message "
        "fails into the dead letters (the leader then sends the task again).",
    )
    target_lock_timeout_s: float = Field(
        default=2.0, gt=0, description="Longest wait for a target's claim lock; then a deferral."
    )
    retry_backoff_base_s: float = Field(default=5.0, gt=0)
    retry_backoff_max_s: float = Field(default=300.0, gt=0)
    per_target_concurrency: int = Field(default=2, ge=1)
    politeness_delay_s: float = Field(default=5.0, gt=0)
    worker_idle_poll_ms: int = Field(
        default=20,
        ge=1,
        le=60_000,
        description="Longest sleep of a worker's consumer between fetches: after its blocking "
        "wait on the queue ended empty, and while the messages it holds fill its prefetch.",
    )
    worker_concurrency: int = Field(
        default=256,
        ge=1,
        le=4096,
        description="Scans in flight per worker process, as coroutines on its event loop. At 256, "
        "against a site answering after 500 ms (bench io_bound): 124 scans/s per process, "
        "9.7 times 8 in flight (12.8/s), worker RSS 96 MB against 84 MB at 8.",
    )
    worker_prefetch: int = Field(
        default=64,
        ge=0,
        description="Messages a worker process fetches beyond those it runs: a cushion that "
        "hides the fetch round trip, small so one process does not hoard the queue (64: a "
        "quarter of the default concurrency; not separately benchmarked).",
    )
    worker_claim_batch: int = Field(
        default=64,
        ge=1,
        description="Most tasks one claim transaction takes; claims that start while the "
        "claim transactions are busy go together in the next.",
    )
    worker_completion_batch: int = Field(
        default=256,
        ge=1,
        description="Most runs' ends one statement writes; ends that arrive while a write is "
        "in flight go together in the next (256: every scan of a process at the default "
        "concurrency; 23 µs of worker CPU per task in batches of 32 against 405 µs one "
        "by one, bench.task_cost).",
    )
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9191, ge=0, le=65535, description="0 disables it.")
    worker_progress_max_age_s: float = Field(
        default=30.0,
        gt=0,
        description="The worker's /livez and /readyz fail once a worker process's event loop or "
        "one of its consumers has not moved for this long (the loop ticks every second).",
    )

    # Recurring schedules.
    schedule_max_per_client: int = Field(
        default=100, ge=0, description="Schedules one user may hold (409 beyond)."
    )
    schedule_max_domains: int = Field(
        default=100, ge=1, description="Domains one schedule may scan at each run."
    )
    schedule_min_interval_s: int = Field(
        default=60,
        ge=1,
        description="Shortest time between two ticks of a schedule (an interval, or the "
        "closest two of a cron expression's next ten ticks).",
    )
    schedule_poll_interval_s: float = Field(
        default=1.0, gt=0, description="How often each relay looks for due schedules."
    )
    schedule_fire_batch_size: int = Field(
        default=50, ge=1, description="Due schedules one firing transaction claims."
    )
    schedule_misfire_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="A tick fired later than this was missed: its schedule's policy "
        "(run_once or skip) decides.",
    )
    schedule_report_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="How often each relay compares the runs whose batch ended with the "
        "previous run (the changes, and changes-only callbacks).",
    )

    # Operations: orphan detection, retention and the health verdict.
    queued_stale_s: float = Field(
        default=600.0,
        gt=0,
        description="Last resort: a task queued this long whose message's whereabouts are "
        "unknown is sent again (never failed, never charged an attempt).",
    )
    idempotency_retention_s: float = Field(default=24 * 3600.0, gt=0)
    health_max_outbox_age_s: float = Field(default=60.0, gt=0)
    health_max_dead_rows: int = Field(default=0, ge=0)

    # Operations dashboard (/ui).
    ui_secret_key: SecretStr | None = Field(
        default=None,
        description="Signs dashboard sessions (32+ characters); generated per process if unset.",
    )
    ui_session_ttl_s: int = Field(default=8 * 3600, ge=60)
    ui_cookie_secure: bool | None = Field(
        default=None, description="Secure cookies; unset: only when the request came over HTTPS."
    )
    ui_refresh_s: int = Field(default=10, ge=0, description="Overview auto-refresh; 0: off.")

    # `scanctl dev`.
    dev_stop_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="On Ctrl-C or SIGTERM, how long `scanctl dev` lets each service stop "
        "before it kills what is left of its processes (as Kubernetes' default grace).",
    )

    # Scanner.
    scanner: str = Field(
        default="worker_service.scanner:scan_domain",
        description="The scan the worker runs, as module:function (an async callable).",
    )
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    dns_timeout_s: float = Field(default=5.0, gt=0)
    fetch_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_redirects: int = Field(default=5, ge=0)
    schemes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["https", "http"])
    http_port: int = Field(default=80, ge=1, le=65535)
    https_port: int = Field(default=443, ge=1, le=65535)
    allow_private: bool = False
    resolver_overrides: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    total_timeout_s: float = Field(default=60.0, gt=0)
    rules_budget_s: float = Field(
        default=2.0,
        gt=0,
        description="Time one scan's keyword and regex rules may take, on a rule thread; rules "
        "left when it runs out are reported as not applied.",
    )
    dns_nameservers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    tls_ca_bundle: str | None = None
    tls_accept_untrusted: bool = False

    @field_validator("schemes", mode="before")
    @classmethod
    def _split_schemes(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

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

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        parse_sentinels(value)
        return value

    @field_validator("dns_nameservers", mode="before")
    @classmethod
    def _split_nameservers(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
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
