"""Given servers shared by parallel test workers: a database and a Redis db for each worker.

Each pytest-xdist worker truncates tables and flushes Redis around its tests, so workers
on one PostgreSQL and one Redis must not share a database or a Redis db.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

import asyncpg
from sqlalchemy.engine import make_url

from shared.embedded import EmbeddedUrls


def worker_number() -> int | None:
    """This process's pytest-xdist worker number (`gw3` is 3), None when not under xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return int(worker.removeprefix("gw")) if worker else None


def worker_urls(urls: EmbeddedUrls, number: int) -> EmbeddedUrls:
    """The database `<name>_gw<number>` and the Redis db `<db> + number` of the given servers."""
    database = make_url(urls.database_url)
    database_url = database.set(database=f"{database.database}_gw{number}").render_as_string(
        hide_password=False
    )
    redis = urlsplit(urls.redis_url)
    base_db = int(redis.path.strip("/") or 0)
    redis_url = redis._replace(path=f"/{base_db + number}").geturl()
    return EmbeddedUrls(database_url=database_url, redis_url=redis_url)


async def _create_database(server_url: str, name: str) -> None:
    connection = await asyncpg.connect(server_url)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # CREATE DATABASE takes no parameters; the name is quoted as an identifier.
            quoted = '"' + name.replace('"', '""') + '"'
            await connection.execute(f"CREATE DATABASE {quoted}")
    finally:
        await connection.close()


def create_database(given_url: str, worker_url: str) -> None:
    """Create the database `worker_url` names on the server of `given_url`, unless it exists."""
    server_url = make_url(given_url).set(drivername="postgresql")
    name = make_url(worker_url).database or ""
    asyncio.run(_create_database(server_url.render_as_string(hide_password=False), name))
