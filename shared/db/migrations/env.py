"""Alembic environment: runs migrations over the async engine from settings."""

from __future__ import annotations

import asyncio
import time

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import models  # noqa: F401  (registers the tables on the metadata)
from shared.db.base import Base
from shared.settings import get_settings

target_metadata = Base.metadata


# Any fixed number: several `scanctl migrate` started at once (a Job retried
# beside a manual run) queue on this lock instead of racing on the DDL.
MIGRATION_LOCK_KEY = 0x5CA0_0B0C
LOCK_RETRY_S = 0.2


def _take_migration_lock(connection: Connection) -> None:
    """Wait for the session-level migration lock between short tries, never inside a
    statement: an index built CONCURRENTLY waits for every open snapshot, so a waiter
    blocked in `pg_advisory_lock` would deadlock with the holder."""
    while True:
        taken = connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
        ).scalar_one()
        connection.commit()
        if taken:
            return
        time.sleep(LOCK_RETRY_S)


def _run(connection: Connection) -> None:
    # A session-level lock: it outlives the commits of revisions that build indexes
    # CONCURRENTLY outside a transaction (`autocommit_block`).
    _take_migration_lock(connection)
    try:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()


async def _run_online(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


def main() -> None:
    url = context.config.attributes.get("sqlalchemy_url") or get_settings().sqlalchemy_url
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_online(url))


main()
