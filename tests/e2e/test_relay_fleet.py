"""Relays as real processes: several share the work, one leads, and SIGTERM loses nothing."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, update

from shared.db.models import Task
from shared.embedded import EmbeddedUrls
from shared.settings import Settings
from tests.e2e.relays import Db, Fleet, Relay, fleet
from tests.helpers import wait_until
from tests.relay_support import (
    broker_messages,
    create_tasks,
    insert_bare_messages,
    outbox_rows,
    task_states,
    unpublished_count,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]
DEADLINE_S = 60.0


@pytest.fixture
def db(settings: Settings) -> Iterator[Db]:
    database = Db(settings)
    yield database
    database.close()


@pytest.fixture
def relays(servers: EmbeddedUrls, tmp_path: Path, clean_state: None) -> Iterator[Fleet]:
    # No scans run here: the site port is never reached.
    with fleet(servers.database_url, servers.redis_url, 9, tmp_path) as running:
        yield running


def drained(db: Db) -> bool:
    return db(unpublished_count) == 0


def test_three_relays_publish_five_thousand_rows_each_exactly_once(
    relays: Fleet, db: Db, redis_client: redis.Redis
) -> None:
    group = [relays.relay(f"relay{index}") for index in range(3)]
    # Committed in 20 transactions while all three run: each commit wakes every relay.
    db(lambda sm: create_tasks(sm, 5000, per_commit=250))
    wait_until(lambda: drained(db), DEADLINE_S, "the outbox to drain", every_s=0.2)

    message_ids = sorted(message["message_id"] for message in broker_messages(redis_client))
    assert message_ids == sorted(str(row.message_id) for row in db(outbox_rows))
    assert len(message_ids) == 5000
    assert sum(relay.metric("scan_outbox_messages_published_total") for relay in group) == 5000
    assert {state for state, _, _ in db(task_states).values()} == {"queued"}


def one_leader(group: list[Relay]) -> Relay | None:
    leaders = [relay for relay in group if relay.is_leader()]
    assert len(leaders) <= 1, "two relays lead at once"
    return leaders[0] if leaders else None


def test_leadership_moves_when_the_leader_is_killed_and_the_new_leader_runs_maintenance(
    relays: Fleet, db: Db
) -> None:
    group = [relays.relay("relay-a"), relays.relay("relay-b")]
    leader = wait_until(lambda: one_leader(group), DEADLINE_S, "a leader")
    follower = next(relay for relay in group if relay is not leader)

    relays.kill(leader.service)
    wait_until(follower.is_leader, DEADLINE_S, "the other relay to take the lead")

    # The new leader's redispatch job finds a task whose worker lease ran out.
    [task_id] = db(lambda sm: create_tasks(sm, 1))
    wait_until(lambda: drained(db), DEADLINE_S, "the task to be published")

    async def expire_lease(sessionmaker) -> None:  # type: ignore[no-untyped-def]
        async with sessionmaker() as session, session.begin():
            await session.execute(
                update(Task)
                .where(Task.id == task_id)
                .values(status="running", attempts=1, lease_expires_at=func.now())
            )

    db(expire_lease)
    wait_until(
        lambda: db(task_states)[task_id][0] == "queued" and len(db(outbox_rows)) == 2,
        DEADLINE_S,
        "the task to be sent again",
    )
    assert follower.metric("scan_outbox_tasks_redispatched_total") == 1


def test_sigterm_mid_drain_exits_zero_and_loses_nothing_and_probes_answer(
    relays: Fleet, db: Db, redis_client: redis.Redis
) -> None:
    relay = relays.relay("relay", SCAN_RELAY_BATCH_SIZE="50")
    assert relay.get("/readyz").json() == {"status": "ready", "database": "ok", "broker": "ok"}
    assert relay.get("/nope").status_code == 404
    total = 10_000
    db(lambda sm: insert_bare_messages(sm, total))
    wait_until(lambda: db(unpublished_count) < total, DEADLINE_S, "publishing to start", 0.01)

    relay.service.process.send_signal(signal.SIGTERM)
    assert relay.service.stop() == 0
    relays.services.remove(relay.service)
    assert "relay_stopped" in relay.service.log()

    # Whatever it marked published is in the broker, and nothing twice.
    in_broker = [message["message_id"] for message in broker_messages(redis_client)]
    marked = [str(row.message_id) for row in db(outbox_rows) if row.published_at is not None]
    assert sorted(in_broker) == sorted(marked)
    # The rest was left unlocked and unpublished: another relay publishes it.
    relays.relay("relay-after", SCAN_RELAY_BATCH_SIZE="500")
    wait_until(lambda: drained(db), DEADLINE_S, "the rest to be published", every_s=0.2)
    assert len({message["message_id"] for message in broker_messages(redis_client)}) == total
    assert len(broker_messages(redis_client)) == total
