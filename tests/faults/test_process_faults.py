"""A relay or a worker dies or freezes while creates flow: nothing is lost, nothing runs twice
in effect, and nothing runs for a task that was not committed."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.e2e.relays import Db
from tests.faults.invariants import log_records
from tests.faults.scenario import scanning_on, scenario
from tests.faults.servers import FaultServers, publish_gate
from tests.faults.site import CountingSite
from tests.helpers import wait_until

# One worker runs the fault scenarios in turn (`--dist loadgroup`): one set of restartable
# servers, and no two scenarios' stacks competing for the CPUs while recovery deadlines run.
pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("faults")]
DEADLINE_S = 60.0


def test_a_relay_killed_between_publishing_and_committing_loses_and_doubles_nothing(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    with (
        scenario(
            "relay SIGKILL mid-batch",
            servers_reset,
            db,
            site,
            broker,
            token,
            tmp_path,
            creates=200,
            rate_per_s=40,
        ) as run,
        publish_gate(servers_reset.postgres.url) as gate,
    ):
        run.after_creates(40)
        gate.close()
        # Both relays sent a batch to the broker and wait to mark it published.
        wait_until(lambda: gate.held_relays() == 2, DEADLINE_S, "both relays held mid-batch")
        run.stack.kill(run.stack.relays["relay-a"].service)
        gate.open()
        # The invariants include an outbox with nothing left unsent: the rows the killed relay
        # had sent but not marked went out again from the other, harmlessly.
        run.finish()


def test_a_worker_killed_mid_scan_has_its_tasks_run_again_elsewhere(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    # Its prefetched messages die with it: maintenance sends their tasks again once stale.
    with scenario(
        "worker SIGKILL mid-scan",
        servers_reset,
        db,
        site,
        broker,
        token,
        tmp_path,
        creates=200,
        rate_per_s=30,
        SCAN_QUEUED_STALE_S="5",
    ) as run:
        victim = run.stack.workers["worker-a"]
        victim_pids = run.stack.pids(victim)
        held = wait_until(
            lambda: scanning_on(db, site, victim_pids), DEADLINE_S, "a scan on worker-a"
        )
        run.stack.kill(victim)
        run.stack.add_worker("worker-c")
        report = run.finish()
    assert report.rerun_tasks >= len(held), report.line()


async def _results(
    sessionmaker: async_sessionmaker[AsyncSession], ids: list[str]
) -> dict[str, tuple[str, str | None, object]]:
    sql = text(
        "SELECT id::text, status, result->'http'->>'title', finished_at FROM tasks"
        " WHERE id = ANY(:ids)"
    )
    async with sessionmaker() as session:
        rows = (await session.execute(sql, {"ids": [uuid.UUID(i) for i in ids]})).all()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


async def _writers(sessionmaker: async_sessionmaker[AsyncSession], ids: list[str]) -> set[str]:
    sql = text("SELECT writer FROM fault_audit WHERE result_written AND task_id = ANY(:ids)")
    async with sessionmaker() as session:
        rows = (await session.execute(sql, {"ids": [uuid.UUID(i) for i in ids]})).all()
    return {row[0] for row in rows}


def test_a_worker_frozen_past_its_lease_cannot_overwrite_its_successor(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    with scenario(
        "worker SIGSTOP past its lease, then SIGCONT",
        servers_reset,
        db,
        site,
        broker,
        token,
        tmp_path,
        creates=150,
        rate_per_s=30,
    ) as run:
        frozen = run.stack.workers["worker-a"]
        frozen_pids = run.stack.pids(frozen)
        held = wait_until(
            lambda: scanning_on(db, site, frozen_pids), DEADLINE_S, "a scan on worker-a"
        )
        run.stack.freeze(frozen)

        def taken_over() -> dict[str, tuple[str, str | None, object]] | None:
            results = db(lambda sm: _results(sm, held))
            return results if {s for s, _, _ in results.values()} == {"succeeded"} else None

        before = wait_until(taken_over, DEADLINE_S, "worker-b to finish the frozen tasks")
        run.stack.thaw(frozen)
        for task_id in held:
            wait_until(
                lambda task_id=task_id: any(
                    (r.get("event"), r.get("task_id")) == ("task_lease_lost", task_id)
                    for r in log_records([frozen.log()])
                ),
                DEADLINE_S,
                f"worker-a to find its lease on {task_id} gone",
            )
        assert db(lambda sm: _results(sm, held)) == before
        writers = db(lambda sm: _writers(sm, held))
        assert writers, "no result write recorded"
        assert not {int(w.rpartition(":")[2]) for w in writers} & frozen_pids
        report = run.finish()
    assert report.rerun_tasks >= len(held), report.line()
