"""Session-wide servers: real PostgreSQL and Redis, embedded unless URLs are given."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import migrate
from shared.db.engine import create_engine, create_sessionmaker
from shared.embedded import EmbeddedUrls, embedded_servers
from shared.settings import Settings, get_settings
from tests.pgbouncer import PgBouncer, pgbouncer

TABLES = "outbox, tasks, users, broker_state"


@pytest.fixture(scope="session")
def servers() -> Iterator[EmbeddedUrls]:
    """PostgreSQL (migrated) and Redis for the whole run; they must start, or the run fails."""
    given_db, given_redis = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if given_db and given_redis:
        urls = EmbeddedUrls(database_url=given_db, redis_url=given_redis)
        migrate.upgrade(urls.database_url)
        yield urls
        return
    with (
        tempfile.TemporaryDirectory(prefix="scan-outbox-test-") as tmp,
        embedded_servers(Path(tmp) / "servers", delete=True) as urls,
    ):
        migrate.upgrade(urls.database_url)
        os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = urls.database_url, urls.redis_url
        get_settings.cache_clear()
        try:
            yield urls
        finally:
            os.environ.pop("DATABASE_URL", None)
            os.environ.pop("REDIS_URL", None)
            get_settings.cache_clear()


@pytest.fixture(scope="session")
def pooler(servers: EmbeddedUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    """A real PgBouncer in transaction mode in front of the session's PostgreSQL."""
    with pgbouncer(servers.database_url, tmp_path_factory.mktemp("pgbouncer")) as running:
        yield running


@pytest.fixture
def settings(servers: EmbeddedUrls) -> Settings:
    return Settings(
        database_url=servers.database_url,  # type: ignore[arg-type]
        redis_url=servers.redis_url,  # type: ignore[arg-type]
        db_pool_size=5,
        relay_batch_size=100,
    )


@pytest.fixture
def redis_client(servers: EmbeddedUrls) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(servers.redis_url)
    yield client
    client.close()


async def truncate_all(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))


@pytest.fixture
async def engine(settings: Settings, redis_client: redis.Redis) -> AsyncIterator[AsyncEngine]:
    """An engine on a clean database and a flushed Redis: no test sees another's rows."""
    engine = create_engine(settings)
    await truncate_all(engine)
    redis_client.flushdb()
    yield engine
    await engine.dispose()


@pytest.fixture
def clean_state(settings: Settings, redis_client: redis.Redis) -> None:
    """For synchronous tests (end to end): a clean database and a flushed Redis."""

    async def truncate() -> None:
        engine = create_engine(settings)
        try:
            await truncate_all(engine)
        finally:
            await engine.dispose()

    asyncio.run(truncate())
    redis_client.flushdb()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)
