"""Alembic environment: runs migrations over the async engine from settings."""

from __future__ import annotations

import asyncio

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


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


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
