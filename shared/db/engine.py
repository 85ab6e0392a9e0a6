"""Engine and session factories; built by each process at start, never at import."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from shared.settings import Settings

# The client gives up on a statement this long after the server should have ended it, so a
# server that vanished without closing the connection cannot hang a caller forever.
CLIENT_TIMEOUT_MARGIN_S = 5.0


def ms_setting(seconds: float) -> str:
    return str(int(seconds * 1000))


def server_limits(settings: Settings, **extra: str) -> dict[str, str]:
    """Session settings that bound what one connection can hold: statement and idle-in-
    transaction timeouts, and TCP keepalives so the server notices a vanished client host
    (kernel default: about two hours). `extra` adds or overrides settings."""
    limits = {
        "statement_timeout": ms_setting(settings.db_statement_timeout_s),
        "idle_in_transaction_session_timeout": ms_setting(
            settings.db_idle_in_transaction_timeout_s
        ),
        "tcp_keepalives_idle": str(settings.db_tcp_keepalives_idle_s),
        "tcp_keepalives_interval": str(settings.db_tcp_keepalives_interval_s),
        "tcp_keepalives_count": str(settings.db_tcp_keepalives_count),
    }
    return {**limits, **extra}


def client_timeout_s(settings: Settings) -> float | None:
    """asyncpg's own per-statement limit, just above the server's (None if that is off)."""
    if not settings.db_statement_timeout_s:
        return None
    return settings.db_statement_timeout_s + CLIENT_TIMEOUT_MARGIN_S


def create_engine(settings: Settings) -> AsyncEngine:
    """A pooled engine whose connections carry `server_limits`. Without pre-ping (the default)
    a connection the server dropped fails its next statement as an outage and SQLAlchemy
    discards the whole pool: callers retry (worker), answer 503 (API) or wait for their next
    cycle (relay)."""
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=settings.db_pool_pre_ping,
        connect_args={
            "server_settings": server_limits(settings),
            "command_timeout": client_timeout_s(settings),
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def autocommit(session: AsyncSession) -> None:
    """Run `session`'s statements in autocommit: each one-statement write is atomic by itself
    in PostgreSQL, so it needs no BEGIN and COMMIT round trips. SQLAlchemy puts the
    connection's isolation level back when it returns to the pool."""
    await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
