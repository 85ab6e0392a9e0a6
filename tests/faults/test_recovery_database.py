"""The database's own limits end what a stuck process holds: a claim that outlived its retries
through an outage, a relay frozen with its batch locked, a frozen leader. Each is recovered in
seconds, and the promise holds."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import keys
from shared.db import tasks
from shared.messages import scan_entry
from tests.e2e.relays import Db, Relay
from tests.faults.client import CreateDriver
from tests.faults.harness import fault_stack
from tests.faults.invariants import log_records
from tests.faults.scenario import Scenario, scenario
from tests.faults.servers import FaultServers, publish_gate
from tests.faults.site import CountingSite
from tests.helpers import make_user, wait_until

# One worker runs the fault scenarios in turn (`--dist loadgroup`): one set of restartable
# servers, and no two scenarios' stacks competing for the CPUs while recovery deadlines run.
pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("faults")]
DEADLINE_S = 60.0


async def _statuses(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    sql = text("SELECT status, count(*) FROM tasks GROUP BY status")
    async with sessionmaker() as session:
        return {row[0]: int(row[1]) for row in (await session.execute(sql)).all()}


async def _runs(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, tuple[int, int]]:
    """(attempts, redispatches) of each task by domain."""
    sql = text("SELECT target_domain, attempts, redispatches FROM tasks")
    async with sessionmaker() as session:
        return {row[0]: (row[1], row[2]) for row in (await session.execute(sql)).all()}


def abandoned_claims(run: Scenario) -> set[str]:
    """Tasks whose claim a worker gave up on after its retries."""
    records = log_records(run.stack.all_logs("worker"))
    return {str(r["task_id"]) for r in records if r.get("event") == "task_claim_abandoned"}


def test_claims_that_outlive_their_retries_in_an_outage_run_once_soon_after_it(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    creates = 40
    with fault_stack(servers_reset, site, tmp_path, SCAN_WORKER_CLAIM_RETRY_S="2") as stack:
        # Workers frozen while the tasks are queued, so that every message meets the outage.
        for worker in stack.workers.values():
            stack.freeze(worker)
        driver = CreateDriver(stack.api_url, token, creates, 8, rate_per_s=40).start()
        run = Scenario("claims dead-lettered in a database outage", stack, driver, db, site, broker)
        run.driver.join(DEADLINE_S)
        wait_until(
            lambda: db(_statuses) == {"queued": creates}, DEADLINE_S, "every task to be queued"
        )

        servers_reset.postgres.stop()
        stopped = time.monotonic()
        for worker in list(stack.workers.values()):
            stack.thaw(worker)
        wait_until(
            lambda: len(abandoned_claims(run)) == creates,
            DEADLINE_S,
            "every claim to give up",
            every_s=0.2,
        )
        servers_reset.postgres.start()
        back = time.monotonic()
        wait_until(
            lambda: db(_statuses) == {"succeeded": creates},
            DEADLINE_S,
            "every task to succeed",
            every_s=0.1,
        )
        recovered_s = time.monotonic() - back
        report = run.finish()
    print(
        f"\noutage {back - stopped:.1f}s; all {creates} tasks succeeded {recovered_s:.1f}s"
        " after the database came back"
    )
    # Before the leader knew where messages were, these waited for the 600 s stale sweep.
    assert recovered_s < 30.0, recovered_s
    assert report.succeeded == creates, report.line()
    fetched = site.snapshot()
    runs = db(_runs)
    for domain, (attempts, redispatches) in runs.items():
        assert (fetched[domain], attempts) == (1, 1), f"{domain} ran more than once"
        assert redispatches >= 1, f"{domain} finished without being sent again"


async def _unpublished_ids(sessionmaker: async_sessionmaker[AsyncSession]) -> list[int]:
    sql = text("SELECT id FROM outbox WHERE published_at IS NULL ORDER BY id")
    async with sessionmaker() as session:
        return [int(row[0]) for row in (await session.execute(sql)).all()]


async def _clock(sessionmaker: async_sessionmaker[AsyncSession]) -> float:
    """The database's clock as epoch seconds (published_at is written on that clock)."""
    sql = text("SELECT extract(epoch FROM clock_timestamp())")
    async with sessionmaker() as session:
        return float((await session.execute(sql)).scalar_one())


async def _published_after(
    sessionmaker: async_sessionmaker[AsyncSession], ids: list[int], since: float
) -> list[float] | None:
    """Seconds after `since` at which each row of `ids` was published; None while any is not."""
    sql = text("SELECT extract(epoch FROM published_at) - :since FROM outbox WHERE id = ANY(:ids)")
    async with sessionmaker() as session:
        rows = (await session.execute(sql, {"ids": ids, "since": since})).all()
    delays = [row[0] for row in rows]
    if len(delays) < len(ids) or any(delay is None for delay in delays):
        return None
    return sorted(float(delay) for delay in delays)


async def _start_delays(sessionmaker: async_sessionmaker[AsyncSession]) -> list[float]:
    """Seconds from each task's creation to its (last) claim."""
    sql = text("SELECT extract(epoch FROM started_at - created_at) FROM tasks")
    async with sessionmaker() as session:
        return sorted(float(row[0]) for row in (await session.execute(sql)).all())


def test_a_relay_frozen_with_its_batch_locked_loses_it_to_the_other_relay(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    idle_limit_s = 3.0
    with (
        scenario(
            "relay SIGSTOP mid-batch",
            servers_reset,
            db,
            site,
            broker,
            token,
            tmp_path,
            creates=150,
            rate_per_s=40,
            SCAN_DB_IDLE_IN_TRANSACTION_TIMEOUT_S=str(idle_limit_s),
        ) as run,
        publish_gate(servers_reset.postgres.url) as gate,
    ):
        run.after_creates(40)
        gate.close()
        # Both relays sent a batch to the broker and wait to mark it published.
        wait_until(lambda: gate.held_relays() == 2, DEADLINE_S, "both relays held mid-batch")
        held = db(_unpublished_ids)
        run.stack.freeze(run.stack.relays["relay-a"].service)
        opened = db(_clock)
        # relay-a's transaction goes on to lock its tasks too, then waits on a frozen client.
        gate.open()
        delays = wait_until(
            lambda: db(lambda sm: _published_after(sm, held, opened)),
            DEADLINE_S,
            "the frozen relay's rows to be published by the other",
            every_s=0.2,
        )
        run.finish()
        starts = db(_start_delays)
    late = [delay for delay in delays if delay > 1.0]
    print(
        f"\n{len(held)} rows held at the gate; {len(delays) - len(late)} published within "
        f"{max(d for d in delays if d <= 1.0):.2f}s of its opening, {len(late)} only after "
        f"{min(late, default=0):.2f}-{max(late, default=0):.2f}s (idle limit {idle_limit_s}s);"
        f" task creation to claim: median {starts[len(starts) // 2]:.2f}s, max {starts[-1]:.2f}s"
    )
    assert late, "the frozen relay's batch was not held"
    # Freed by the server ending the frozen relay's session, not by anything slower.
    assert max(late) < idle_limit_s + 10.0, delays


async def _lock_holders(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Sessions holding the relay leader's advisory lock."""
    sql = text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = 0 AND objid::bigint = :key AND objsubid = 1"
    )
    async with sessionmaker() as session:
        return int((await session.execute(sql, {"key": keys.RELAY_LEADER_LOCK})).scalar_one())


async def _orphan(sessionmaker: async_sessionmaker[AsyncSession]) -> uuid.UUID:
    """A task whose worker died mid-scan: running, its lease expired, its message long gone."""
    user, _ = await make_user(sessionmaker, f"orphan-{uuid.uuid4().hex[:6]}")
    task_id = uuid.uuid4()
    new = tasks.NewTask(
        user_id=user.id, target_domain="orphan.example.com", config={}, max_attempts=3
    )
    async with sessionmaker() as session, session.begin():
        await tasks.insert_task_with_message(session, task_id, new, scan_entry(task_id, "scans"))
        await session.execute(
            text("UPDATE outbox SET published_at = now() WHERE task_id = :id"), {"id": task_id}
        )
        await session.execute(
            text(
                "UPDATE tasks SET status = 'running', attempts = 1, lease_owner = 'gone:1',"
                " lease_token = gen_random_uuid(), lease_expires_at = now() - interval '1 second'"
                " WHERE id = :id"
            ),
            {"id": task_id},
        )
    return task_id


async def _task(
    sessionmaker: async_sessionmaker[AsyncSession], task_id: uuid.UUID
) -> tuple[str, int, int]:
    sql = text("SELECT status, attempts, redispatches FROM tasks WHERE id = :id")
    async with sessionmaker() as session:
        row = (await session.execute(sql, {"id": task_id})).one()
    return row[0], row[1], row[2]


def test_a_frozen_leader_loses_the_lead_and_the_new_leader_runs_maintenance(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    check_s = 1.0
    with scenario(
        "leader SIGSTOP",
        servers_reset,
        db,
        site,
        broker,
        token,
        tmp_path,
        creates=60,
        rate_per_s=20,
        SCAN_RELAY_LEADER_CHECK_INTERVAL_S=str(check_s),
        SCAN_DB_IDLE_IN_TRANSACTION_TIMEOUT_S="3",
    ) as run:
        run.after_creates(20)

        def the_leader() -> Relay | None:
            leaders = [relay for relay in run.stack.relays.values() if relay.is_leader()]
            return leaders[0] if len(leaders) == 1 and db(_lock_holders) == 1 else None

        leader = wait_until(the_leader, DEADLINE_S, "one leader")
        follower = next(r for r in run.stack.relays.values() if r is not leader)
        run.stack.freeze(leader.service)
        frozen = time.monotonic()
        wait_until(follower.is_leader, DEADLINE_S, "the other relay to take the lead")
        took_over_s = time.monotonic() - frozen
        assert db(_lock_holders) == 1
        run.finish()
        # The old leader is still frozen: only the new one can send this task again.
        orphan = db(_orphan)
        made = time.monotonic()
        wait_until(
            lambda: db(lambda sm: _task(sm, orphan))[0] == "succeeded",
            DEADLINE_S,
            "the new leader to send the orphan again and a worker to run it",
            every_s=0.1,
        )
        orphan_s = time.monotonic() - made
        assert db(lambda sm: _task(sm, orphan)) == ("succeeded", 2, 1)
        assert site.snapshot()["orphan.example.com"] == 1
    print(
        f"\nleader check every {check_s}s: the other relay led {took_over_s:.1f}s after the"
        f" leader froze; the orphan it found succeeded {orphan_s:.1f}s after it appeared"
    )
    # The server ends the frozen leader's idle session after three check intervals; the next
    # check of the other relay takes the lock.
    assert took_over_s < 3 * check_s + 2 * check_s + 2.0, took_over_s
