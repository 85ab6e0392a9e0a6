"""Settings for every service, read from the environment (and `.env`) on first use."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """All knobs of scan-outbox: `DATABASE_URL`, `REDIS_URL`, `BROKER_URL`, the rest `SCAN_*`."""

    model_config = SettingsConfigDict(
        env_prefix="SCAN_", env_file=".env", extra="ignore", populate_by_name=True
    )

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:5432/scan_outbox"),
        validation_alias=AliasChoices("DATABASE_URL", "SCAN_DATABASE_URL"),
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
    log_level: str = "INFO"
    log_json: bool | None = None

    # Database pool.
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)

    # API.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_config_bytes: int = Field(default=16 * 1024, ge=16)
    max_config_depth: int = Field(default=8, ge=1)
    page_size_max: int = Field(default=100, ge=1)

    # Task defaults.
    task_max_attempts: int = Field(default=3, ge=1)

    # Redis safeguards.
    redis_timeout_s: float = Field(default=0.5, gt=0)
    marker_ttl_s: int = Field(default=300, ge=1)

    # Relay.
    relay_batch_size: int = Field(default=500, ge=1)
    relay_poll_interval_s: float = Field(default=1.0, gt=0)
    relay_backoff_base_s: float = Field(default=1.0, gt=0)
    relay_backoff_max_s: float = Field(default=300.0, gt=0)
    relay_listen_reconnect_max_s: float = Field(default=10.0, gt=0)

    # Worker.
    queue_name: str = "scans"
    worker_lease_s: float = Field(default=120.0, gt=0)

    # Scanner.
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    dns_timeout_s: float = Field(default=5.0, gt=0)
    fetch_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_redirects: int = Field(default=5, ge=0)
    schemes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["https", "http"])
    http_port: int = Field(default=80, ge=1, le=65535)
    https_port: int = Field(default=443, ge=1, le=65535)
    allow_private: bool = False
    resolver_overrides: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)

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


def to_sqlalchemy_url(url: str) -> str:
    _scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("DATABASE_URL must look like postgresql://user:password@host/db")
    return f"postgresql+asyncpg://{rest}"


def to_asyncpg_dsn(url: str) -> str:
    _scheme, _sep, rest = url.partition("://")
    return f"postgresql://{rest}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once on first call."""
    return Settings()
