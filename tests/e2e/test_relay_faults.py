"""Faults with real processes: the broker goes away, a relay dies mid-batch."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from shared import keys
from shared.embedded import EmbeddedUrls, RedisProcess, free_port
from shared.settings import Settings
from tests.e2e.relays import Db, fleet
from tests.helpers import wait_until
from tests.relay_support import claimable_count, create_tasks, outbox_rows, task_states
from tests.sites import Site

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]
DEADLINE_S = 60.0
MESSAGES_KEY = f"{keys.broker_queue_key('scans')}.msgs"


@pytest.fixture
def db(settings: Settings) -> Iterator[Db]:
    database = Db(settings)
    yield database
    database.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis this test may stop and start again on the same port (no persistence)."""
    server = RedisProcess(tmp_path / "redis", port=free_port())
    server.start()
    yield server
    server.stop()


def finished(db: Db, ids: list[uuid.UUID]) -> bool:
    states = db(task_states)
    return all(states[task_id][0] == "succeeded" for task_id in ids)


def test_tasks_created_while_the_broker_is_down_back_off_then_all_complete(
    servers: EmbeddedUrls, site: Site, own_redis: RedisProcess, tmp_path: Path, db: Db
) -> None:
    with fleet(servers.database_url, own_redis.url, site.port, tmp_path) as group:
        relay = group.relay("relay")
        group.worker()
        own_redis.stop()
        ids = db(lambda sm: create_tasks(sm, 30, per_commit=10))

        def backing_off() -> bool:
            rows = db(outbox_rows)
            return all(
                row.published_at is None
                and row.dead_at is None
                and row.publish_attempts >= 1
                and "broker unavailable" in (row.last_error or "")
                for row in rows
            )

        wait_until(backing_off, DEADLINE_S, "every row to fail and back off")
        assert {state for state, _, _ in db(task_states).values()} == {"pending"}
        assert relay.get("/readyz").json()["broker"] == "down"

        own_redis.start()
        wait_until(lambda: finished(db, ids), 90, "every task to succeed", every_s=0.2)
    assert all(row.published_at is not None for row in db(outbox_rows))
    assert {attempts for _, attempts, _ in db(task_states).values()} == {1}
    assert site.total_hits == 30


class TaskRowLock:
    """Holds row locks on tasks from a transaction of its own until released."""

    def __init__(self, db: Db, settings: Settings, ids: list[uuid.UUID]) -> None:
        self.db = db
        self.connection = db.runner.run(asyncpg.connect(settings.asyncpg_dsn))
        db.runner.run(self.connection.execute("BEGIN"))
        db.runner.run(
            self.connection.execute(
                "SELECT 1 FROM tasks WHERE id = ANY($1::uuid[]) FOR UPDATE", ids
            )
        )

    def release(self) -> None:
        if not self.connection.is_closed():
            self.db.runner.run(self.connection.execute("ROLLBACK"))
            self.db.runner.run(self.connection.close())


def test_a_relay_killed_mid_batch_leaves_its_rows_to_another_and_duplicates_scan_once(
    servers: EmbeddedUrls,
    site: Site,
    tmp_path: Path,
    db: Db,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    ids = db(lambda sm: create_tasks(sm, 20, per_commit=20))
    # Marking the batch published waits on these task rows: the first relay will have
    # sent its batch to the broker and not yet committed when it dies.
    lock = TaskRowLock(db, settings, ids)
    try:
        with fleet(servers.database_url, servers.redis_url, site.port, tmp_path) as group:
            first = group.relay("relay-first")
            wait_until(lambda: redis_client.hlen(MESSAGES_KEY) == 20, DEADLINE_S, "a publish")
            assert db(claimable_count) == 0, "the first relay holds every row"
            second = group.relay("relay-second")
            group.kill(first.service)
            lock.release()

            wait_until(
                lambda: (
                    db(claimable_count) == 0 and all(row.published_at for row in db(outbox_rows))
                ),
                DEADLINE_S,
                "the second relay to publish the rows",
            )
            assert second.metric("scan_outbox_messages_published_total") == 20
            assert redis_client.hlen(MESSAGES_KEY) == 40, "each message reached the broker twice"

            group.worker()
            wait_until(lambda: finished(db, ids), DEADLINE_S, "every task to succeed", 0.2)
            wait_until(lambda: redis_client.hlen(MESSAGES_KEY) == 0, DEADLINE_S, "all acks")
    finally:
        lock.release()
    assert {attempts for _, attempts, _ in db(task_states).values()} == {1}
    assert site.total_hits == 20
