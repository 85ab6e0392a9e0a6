"""Every migration from the first revision, applied one by one while a worker holds leases and
renews them and, at each step, a long reader holds `tasks`: no renewal waits out its statement
timeout, no lease lapses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from shared.db import leases, migrate
from shared.db.engine import create_engine, create_sessionmaker, single_statement
from shared.embedded import EmbeddedUrls
from shared.settings import Settings, to_asyncpg_dsn

# The worker's timing scaled down tenfold: renewals every third of the lease, a statement
# limit as long as the lease.
LEASE_S = 3.0
RENEW_EVERY_S = 1.0
STATEMENT_TIMEOUT_S = 3.0
# A reader (a report, a dump) holding `tasks` longer than a renewal may wait: a DDL statement
# queued behind it without a lock timeout would hold every renewal behind it as long.
READER_HOLD_S = 4.5
TASKS = 20


def revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(migrate.alembic_config("postgresql://unused"))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


@pytest.fixture
def scratch_url(servers: EmbeddedUrls) -> Iterator[str]:
    name = f"online_{uuid.uuid4().hex[:10]}"

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(servers.database_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(servers.database_url).set(database=name).render_as_string(False)
    finally:
        asyncio.run(run(f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _running_tasks(url: str) -> dict[uuid.UUID, uuid.UUID]:
    """TASKS running tasks with current leases, written with the first revision's columns."""
    held = {uuid.uuid4(): uuid.uuid4() for _ in range(TASKS)}
    connection = await asyncpg.connect(to_asyncpg_dsn(url))
    try:
        user_id = await connection.fetchval(
            "INSERT INTO users (id, name, token_hash) VALUES (1, 'w', 'h') RETURNING id"
        )
        await connection.executemany(
            "INSERT INTO tasks (id, user_id, target_domain, status, lease_owner, lease_token,"
            " lease_expires_at) VALUES ($1, $2, 'example.com', 'running', 'w:1', $3,"
            " clock_timestamp() + make_interval(secs => $4))",
            [(task_id, user_id, token, LEASE_S) for task_id, token in held.items()],
        )
    finally:
        await connection.close()
    return held


async def _hold_tasks(url: str, started: asyncio.Event) -> None:
    connection = await asyncpg.connect(to_asyncpg_dsn(url))
    try:
        async with connection.transaction():
            await connection.fetchval("SELECT count(*) FROM tasks")
            started.set()
            await asyncio.sleep(READER_HOLD_S)
    finally:
        await connection.close()


async def _renew_until(
    settings: Settings, held: dict[uuid.UUID, uuid.UUID], done: asyncio.Event
) -> tuple[float, list[str]]:
    """Renew every RENEW_EVERY_S as the worker does until `done`; the longest renewal and
    every failure (an error, or a lease found lost)."""
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    longest_s, failures = 0.0, []
    try:
        while not done.is_set():
            began = time.monotonic()
            try:
                async with sessionmaker() as session, single_statement(session):
                    lost = await leases.renew_leases(session, held, LEASE_S)
                if lost:
                    failures.append(f"{len(lost)} leases lost")
            except Exception as exc:
                failures.append(repr(exc)[:200])
            longest_s = max(longest_s, time.monotonic() - began)
            await asyncio.sleep(max(0.0, RENEW_EVERY_S - (time.monotonic() - began)))
    finally:
        await engine.dispose()
    return longest_s, failures


async def _migrate_step_by_step(url: str, steps: list[str]) -> float:
    """Upgrade to each of `steps` in turn, each while a reader holds `tasks`; the time the
    slowest step took."""
    slowest_s = 0.0
    for revision in steps:
        reading = asyncio.Event()
        reader = asyncio.create_task(_hold_tasks(url, reading))
        await reading.wait()
        began = time.monotonic()
        try:
            await asyncio.to_thread(migrate.upgrade, url, revision)
        finally:
            slowest_s = max(slowest_s, time.monotonic() - began)
            await reader
    return slowest_s


async def test_migrating_from_the_first_revision_lets_every_lease_renewal_through(
    scratch_url: str,
) -> None:
    first, *later = revisions()
    await asyncio.to_thread(migrate.upgrade, scratch_url, first)
    held = await _running_tasks(scratch_url)
    settings = Settings(database_url=scratch_url, db_statement_timeout_s=STATEMENT_TIMEOUT_S)  # type: ignore[arg-type]
    done = asyncio.Event()
    renewer = asyncio.create_task(_renew_until(settings, held, done))
    try:
        slowest_s = await _migrate_step_by_step(scratch_url, later)
    finally:
        done.set()
        longest_s, failures = await renewer

    assert await migrate.current_revision(scratch_url) == migrate.head_revision()
    # Some revision really waited on the reader while the renewals went on.
    assert slowest_s > STATEMENT_TIMEOUT_S
    assert failures == []
    assert longest_s < STATEMENT_TIMEOUT_S
