"""Engine and session factories; built by each process at start, never at import."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from shared.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    """A pooled engine. Without pre-ping (the default) a connection the server dropped fails
    its next statement as an outage and SQLAlchemy discards the whole pool: callers retry
    (worker), answer 503 (API) or wait for their next cycle (relay)."""
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=settings.db_pool_pre_ping,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def autocommit(session: AsyncSession) -> None:
    """Run `session`'s statements in autocommit: each one-statement write is atomic by itself
    in PostgreSQL, so it needs no BEGIN and COMMIT round trips. SQLAlchemy puts the
    connection's isolation level back when it returns to the pool."""
    await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
