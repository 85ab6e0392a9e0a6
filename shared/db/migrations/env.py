"""Alembic environment: runs migrations over the async engine from settings, online-safe.

Each revision runs in its own transaction, under a short `lock_timeout`: a DDL statement
queued behind a long transaction would otherwise hold every later reader and writer of its
table (a worker's lease renewal among them) for as long as it waits. A revision that gives
up waiting is rolled back and tried again after a pause, while the services run on.
"""

from __future__ import annotations

import asyncio
import time

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import models  # noqa: F401  (registers the tables on the metadata)
from shared.db.base import Base
from shared.logging import get_logger
from shared.settings import get_settings

log = get_logger("shared.db.migrations")

target_metadata = Base.metadata


# Any fixed number: several `scanctl migrate` started at once (a Job retried
# beside a manual run) queue on this lock instead of racing on the DDL.
MIGRATION_LOCK_KEY = 0x5CA0_0B0C
LOCK_RETRY_S = 0.2
# Longest a DDL statement waits for its table lock. Statements queued behind it wait as long,
# so it stays far below the services' statement timeout (SCAN_DB_STATEMENT_TIMEOUT_S, 30 s)
# and a lease renewal's period (a third of SCAN_WORKER_LEASE_S, 10 s).
DDL_LOCK_TIMEOUT = "2s"
# A revision that timed out waiting is tried again this many times, after pauses doubling
# from the first: about 2.5 minutes of tries and waits in all.
DDL_ATTEMPTS = 10
DDL_RETRY_FIRST_S = 0.5
DDL_RETRY_MAX_S = 15.0
LOCK_NOT_AVAILABLE = "55P03"


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


def _gave_up_waiting(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE


def _run_with_retries(connection: Connection) -> None:
    """Run the pending revisions; one that times out waiting for a lock is rolled back and,
    after a pause, the run resumes from it (the ones before it stay committed)."""
    pause_s = DDL_RETRY_FIRST_S
    for attempt in range(1, DDL_ATTEMPTS + 1):
        try:
            with context.begin_transaction():
                context.run_migrations()
            return
        except DBAPIError as exc:
            if not _gave_up_waiting(exc) or attempt == DDL_ATTEMPTS:
                raise
            connection.rollback()
            log.warning("migration_lock_timeout", attempt=attempt, retry_in_s=pause_s)
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, DDL_RETRY_MAX_S)


def _run(connection: Connection) -> None:
    # A session-level lock: it outlives the commits of revisions that build indexes
    # CONCURRENTLY outside a transaction (`autocommit_block`).
    _take_migration_lock(connection)
    try:
        # Session settings, so they hold in every revision's transaction and autocommit block:
        # short lock waits, and no statement limit (an index built CONCURRENTLY on a large
        # table takes as long as it takes, without blocking anyone).
        connection.execute(text(f"SET lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
        connection.execute(text("SET statement_timeout = 0"))
        connection.commit()
        context.configure(
            connection=connection, target_metadata=target_metadata, transaction_per_migration=True
        )
        _run_with_retries(connection)
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
