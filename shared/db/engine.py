"""Engine and session factories; built by each process at start, never at import."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
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


def transaction_limits(settings: Settings) -> dict[str, str]:
    """The `server_limits` that a transaction pooler's clients set per transaction instead:
    the server ends a statement or an idle transaction; keepalives are the pooler's own."""
    limits = server_limits(settings)
    return {
        name: limits[name] for name in ("statement_timeout", "idle_in_transaction_session_timeout")
    }


def unique_statement_name() -> str:
    """A prepared statement name no other client of a shared server connection can hold."""
    return f"__asyncpg_{uuid.uuid4()}__"


def pooled_connect_args(settings: Settings) -> dict[str, Any]:
    """asyncpg arguments for a connection through a transaction pooler: no startup settings
    but the application name, no statement cache (a statement prepared on one server
    connection is unknown on the next), unique names for the statements SQLAlchemy prepares."""
    return {
        "server_settings": {},
        "command_timeout": client_timeout_s(settings),
        "statement_cache_size": 0,
        # SQLAlchemy's own per-connection cache of prepared statements would outlive them.
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": unique_statement_name,
    }


_SET_LIMITS_SQL = (
    "SELECT set_config('statement_timeout', :statement_timeout, true), "
    "set_config('idle_in_transaction_session_timeout', :idle_in_transaction_session_timeout, "
    "true)"
)


# An engine execution option marking engines whose connections go through a transaction pooler.
TRANSACTION_POOLED = "scan_transaction_pooled"


def _limit_each_transaction(engine: AsyncEngine, limits: dict[str, str]) -> None:
    """Set `limits` at the start of every transaction (`set_config(..., true)`: they end with
    it, so the pooler's next client on that server connection gets its own)."""
    statement = text(_SET_LIMITS_SQL).bindparams(**limits)

    @event.listens_for(engine.sync_engine, "begin")
    def _set_limits(connection: Connection) -> None:
        connection.execute(statement)


def create_engine(settings: Settings) -> AsyncEngine:
    """A pooled engine whose connections carry `server_limits`. Without pre-ping (the default)
    a connection the server dropped fails its next statement as an outage and SQLAlchemy
    discards the whole pool: callers retry (worker), answer 503 (API) or wait for their next
    cycle (relay). Behind a transaction pooler (`SCAN_DATABASE_POOL_MODE=transaction`) the
    limits are set per transaction and no statement is cached on the server."""
    if not settings.transaction_pooled:
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
    engine = create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=settings.db_pool_pre_ping,
        connect_args=pooled_connect_args(settings),
        execution_options={TRANSACTION_POOLED: True},
    )
    _limit_each_transaction(engine, transaction_limits(settings))
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_transaction_pooled(session: AsyncSession) -> bool:
    bind = session.bind
    if bind is None:
        return False
    return bool(bind.sync_engine.get_execution_options().get(TRANSACTION_POOLED))


@asynccontextmanager
async def single_statement(session: AsyncSession) -> AsyncIterator[None]:
    """A transaction holding one statement (a write, or a read), committed when the block ends
    without error; the session holds no connection after it.

    A single statement is atomic by itself in PostgreSQL, so on a direct connection the block
    runs it in autocommit, saving the BEGIN and COMMIT round trips; the connection goes back
    to the pool as the block ends, and the pool puts its isolation level back. Behind a
    transaction pooler it is a plain transaction: a statement prepared outside one may run on
    another server connection than the one that prepared it. Like `session.begin()`, it
    refuses a session already in a transaction, so no earlier read can hide in it."""
    async with session.begin():
        if not is_transaction_pooled(session):
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield
