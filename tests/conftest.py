"""Session-wide servers: real PostgreSQL and Redis, embedded unless URLs are given."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import migrate
from shared.db.engine import create_engine, create_sessionmaker
from shared.embedded import EmbeddedUrls, embedded_servers
from shared.settings import Settings, get_settings
from tests import disposable, given_servers
from tests.faults.summary import FAULT_SECTIONS
from tests.pgbouncer import PgBouncer, pgbouncer

TABLES = "outbox, tasks, users, broker_state"
# Sections the parallel workers' fault scenarios measured, printed once by the controller.
WORKER_SECTIONS: list[tuple[str, list[str]]] = []


def pytest_configure(config: pytest.Config) -> None:
    """Refuse, before any test, servers the suite's truncates and flushes could hurt."""
    message = disposable.refusal(os.environ)
    if message:
        raise pytest.UsageError(message)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """(pytest-xdist, on the controller) keep what a finished worker's fault scenarios measured."""
    WORKER_SECTIONS.extend(getattr(node, "workeroutput", {}).get(FAULT_SECTIONS, []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for title, lines in WORKER_SECTIONS:
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)


@contextlib.contextmanager
def _urls_in_environment(urls: EmbeddedUrls) -> Iterator[EmbeddedUrls]:
    """`urls` in DATABASE_URL and REDIS_URL (what the processes tests start read) meanwhile."""
    saved = {name: os.environ.get(name) for name in ("DATABASE_URL", "REDIS_URL")}
    os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = urls.database_url, urls.redis_url
    get_settings.cache_clear()
    try:
        yield urls
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


def _given_servers(given: EmbeddedUrls) -> Iterator[EmbeddedUrls]:
    """The given servers; a parallel worker gets its own database and Redis db on them."""
    number = given_servers.worker_number()
    if number is None:
        migrate.upgrade(given.database_url)
        yield given
        return
    urls = given_servers.worker_urls(given, number)
    given_servers.create_database(given.database_url, urls.database_url)
    migrate.upgrade(urls.database_url)
    with _urls_in_environment(urls):
        yield urls


@pytest.fixture(scope="session")
def servers() -> Iterator[EmbeddedUrls]:
    """PostgreSQL (migrated) and Redis for the whole run (for each parallel worker, its
    own); they must start, or the run fails."""
    given_db, given_redis = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if given_db and given_redis:
        yield from _given_servers(EmbeddedUrls(database_url=given_db, redis_url=given_redis))
        return
    with (
        tempfile.TemporaryDirectory(prefix="scan-outbox-test-") as tmp,
        embedded_servers(Path(tmp) / "servers", delete=True) as urls,
    ):
        migrate.upgrade(urls.database_url)
        with _urls_in_environment(urls):
            yield urls


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
