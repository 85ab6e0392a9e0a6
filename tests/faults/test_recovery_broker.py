"""The broker loses messages, or a worker dies holding them: the relay leader sends again the
tasks whose message is gone, within seconds and without charging an attempt; a backlog,
however long, is no loss at all.

Each test times the recovery: from the fault to the last affected task's end, read from the
tasks' `finished_at` (same host, same clock as the test), and lists it in the run's summary.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import keys
from tests.e2e.relays import RELAY_ENV, Db
from tests.faults import invariants
from tests.faults.client import CreateDriver
from tests.faults.harness import (
    FAULT_ENV,
    HEALTHY_LEASE,
    WORKER_CONCURRENCY,
    WORKER_PREFETCH,
    FaultStack,
    fault_stack,
)
from tests.faults.scenario import Scenario, scanning_on, scenario
from tests.faults.servers import FaultServers, target_hold
from tests.faults.site import CountingSite
from tests.helpers import wait_until
from worker_service import claimer

# One worker runs the fault scenarios in turn (`--dist loadgroup`): one set of restartable
# servers, and no two scenarios' stacks competing for the CPUs while recovery deadlines run.
pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("faults")]

STAGE_DEADLINE_S = 60.0
# How often the leader checks the broker (the product's default, not shortened here).
BROKER_CHECK_S = 2.0
# A broker that lost its data: every task it held ends within this of the loss, plus the
# time the workers need to scan everything that was waiting.
LOSS_RECOVERY_S = 20.0
# Lost messages are sent again at the leader's next broker check or so.
RESEND_BOUND_S = 3 * BROKER_CHECK_S
# A worker fetches its scans in flight plus its prefetch.
FETCHED = WORKER_CONCURRENCY + WORKER_PREFETCH
CONCURRENT_SCANS = 2 * WORKER_CONCURRENCY  # worker-a and worker-b
# Claims blocked on a target's lock at most: each worker's claim transactions in flight (the
# other claims queue behind them in the worker), worker-a and worker-b. Fewer when a worker's
# messages arrived together and one transaction took several of them.
MAX_BLOCKED_CLAIMS = 2 * min(WORKER_CONCURRENCY, claimer.BATCHES_IN_FLIGHT)


@dataclass(frozen=True)
class TaskRow:
    id: str
    domain: str
    status: str
    attempts: int
    redispatches: int
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


async def _task_rows(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, TaskRow]:
    sql = text(
        "SELECT id::text, target_domain, status, attempts, redispatches, queued_at, started_at,"
        " finished_at FROM tasks"
    )
    async with sessionmaker() as session:
        return {row[0]: TaskRow(*row) for row in (await session.execute(sql)).all()}


async def _tasks_of(
    sessionmaker: async_sessionmaker[AsyncSession], broker_message_ids: list[str]
) -> set[str]:
    """The tasks whose outbox rows were published as these broker messages."""
    sql = text("SELECT task_id::text FROM outbox WHERE broker_message_id = ANY(:ids)")
    async with sessionmaker() as session:
        rows = (await session.execute(sql, {"ids": broker_message_ids})).all()
    return {row[0] for row in rows}


async def _running_count(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with sessionmaker() as session:
        sql = text("SELECT count(*) FROM tasks WHERE status = 'running'")
        return int((await session.execute(sql)).scalar_one())


async def _owners(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, str]:
    sql = text("SELECT id::text, lease_owner FROM tasks WHERE status = 'running'")
    async with sessionmaker() as session:
        return {row[0]: row[1] for row in (await session.execute(sql)).all()}


def _running_on(db: Db, pids: set[int]) -> set[str]:
    """Tasks running under a lease held by one of `pids` (lease owner `host:pid`)."""
    return {
        task_id
        for task_id, owner in db(_owners).items()
        if owner and int(owner.rpartition(":")[2]) in pids
    }


def recovery_s(db: Db, ids: Iterable[str], fault_at: float, bound_s: float, what: str) -> float:
    """Waits until every task in `ids` is terminal, failing once `bound_s` have passed since
    `fault_at` (wall clock); returns the seconds from the fault to the last one's end."""
    wanted = set(ids)

    def ended() -> dict[str, TaskRow] | None:
        rows = db(_task_rows)
        done = all(rows[i].status in invariants.TERMINAL for i in wanted)
        return rows if done else None

    left_s = max(0.0, bound_s - (time.time() - fault_at))
    rows = wait_until(ended, left_s, f"{what} within {bound_s:.1f}s of the fault", every_s=0.25)
    return max(_finished(rows[i]) for i in wanted) - fault_at


def _finished(row: TaskRow) -> float:
    assert row.finished_at is not None, row
    return row.finished_at.timestamp()


def _note(line: str) -> None:
    invariants.RECOVERY_TIMES.append(line)
    print(f"\n{line}")


def _relay_events(stack: FaultStack, event: str) -> int:
    return sum(r.get("event") == event for r in invariants.log_records(stack.all_logs("relay")))


def _fetched_by(broker: redis.Redis, pids: set[int], queue: str) -> list[str]:
    """Ids of the messages fetched and not yet acked by the worker processes `pids`."""
    fetched: list[str] = []
    prefix = f"{keys.broker_queue_key('__acks__')}."
    for raw_key in broker.scan_iter(match=f"{prefix}*.{queue}"):
        key = raw_key.decode()
        broker_id = key[len(prefix) : -len(queue) - 1]
        if int(broker_id.rsplit(":", 2)[1]) in pids:
            fetched.extend(member.decode() for member in broker.smembers(key))
    return fetched


def _wait_for_busy_drain(run: Scenario, queue: str, waiting_at_least: int) -> None:
    """Until every worker slot is scanning and messages still wait in the broker."""

    def busy() -> bool:
        running = run.db(_running_count)
        return running >= CONCURRENT_SCANS and run.broker.llen(queue) >= waiting_at_least

    wait_until(busy, STAGE_DEADLINE_S, "busy workers and a queue of waiting messages")


def test_a_backlog_several_times_the_stale_threshold_runs_each_task_once(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    # Far more work than the workers do in the stale threshold: the last tasks wait in the
    # broker several thresholds long. Their messages are there all along, so none is touched.
    stale_s = 2.0
    site.delay_s = 2.0
    creates = 160
    with scenario(
        "backlog several times the stale threshold",
        servers_reset,
        db,
        site,
        broker,
        token,
        tmp_path,
        creates=creates,
        rate_per_s=100,
        SCAN_QUEUED_STALE_S=str(stale_s),
        **HEALTHY_LEASE,
    ) as run:
        report = run.finish()
    rows = list(db(_task_rows).values())
    assert len(rows) == creates == report.succeeded, report.line()
    counts = {(r.status, r.attempts, r.redispatches) for r in rows}
    assert counts == {("succeeded", 1, 0)}, counts
    fetched = site.snapshot()
    assert all(fetched[r.domain] == 1 for r in rows), {r.domain: fetched[r.domain] for r in rows}
    # The premise: tasks did wait in the broker several stale thresholds long.
    waits = [
        (r.started_at - r.queued_at).total_seconds() for r in rows if r.started_at and r.queued_at
    ]
    assert max(waits) > 3 * stale_s, f"no backlog: the longest wait in the queue was {max(waits)}s"
    drain_s = max(_finished(r) for r in rows) - min(
        r.queued_at.timestamp() for r in rows if r.queued_at
    )
    _note(
        f"backlog: {creates} tasks drained in {drain_s:.1f}s, longest queue wait "
        f"{max(waits):.1f}s (stale threshold {stale_s}s), none sent again"
    )


def _lost_work_bound_s(creates: int, scan_s: float) -> float:
    """The loss bound plus the scanning every task needs at the stack's concurrency."""
    return LOSS_RECOVERY_S + creates * scan_s / CONCURRENT_SCANS


async def _last_sent_again(
    sessionmaker: async_sessionmaker[AsyncSession], task_ids: set[str], after: float
) -> float:
    """When the last of these tasks got an outbox row written after `after` (epoch s)."""
    sql = text(
        "SELECT extract(epoch FROM max(created_at)) FROM outbox"
        " WHERE task_id::text = ANY(:ids) AND created_at > to_timestamp(:after)"
    )
    async with sessionmaker() as session:
        result = await session.execute(sql, {"ids": sorted(task_ids), "after": after})
        return float(result.scalar_one())


def _check_loss_recovered(db: Db, run: Scenario, lost_messages: list[str]) -> set[str]:
    """Every task succeeded once, none charged an attempt; the tasks whose message was lost
    were sent again. Returns those tasks."""
    lost = db(lambda sm: _tasks_of(sm, lost_messages))
    assert len(lost) == len(lost_messages), "a lost message without its outbox row"
    rows = db(_task_rows)
    assert {(r.status, r.attempts) for r in rows.values()} == {("succeeded", 1)}, [
        r for r in rows.values() if (r.status, r.attempts) != ("succeeded", 1)
    ][:3]
    not_sent_again = [rows[i] for i in lost if rows[i].redispatches < 1]
    assert not not_sent_again, not_sent_again[:3]
    assert _relay_events(run.stack, "broker_data_lost") >= 1
    return lost


def test_broker_flushed_mid_drain_sends_every_lost_task_again_within_seconds(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    # The product's stale threshold (600 s): only knowledge of the broker can rescue them.
    site.delay_s = 1.0
    creates = 200
    queue = keys.broker_queue_key(servers_reset.settings.queue_name)
    with scenario(
        "broker FLUSHALL mid-drain",
        servers_reset,
        db,
        site,
        broker,
        token,
        tmp_path,
        creates=creates,
        rate_per_s=150,
        **HEALTHY_LEASE,
    ) as run:
        run.after_creates(creates)
        _wait_for_busy_drain(run, queue, waiting_at_least=20)
        # What waited in the broker, read in the same transaction that wipes it.
        pipe = broker.pipeline(transaction=True)
        pipe.lrange(queue, 0, -1)
        pipe.flushall()
        waiting, _ = pipe.execute()
        flushed_at = time.time()
        bound_s = _lost_work_bound_s(creates, site.delay_s)
        elapsed_s = recovery_s(db, db(_task_rows), flushed_at, bound_s, "every task to end")
        run.finish()
        lost = _check_loss_recovered(db, run, [m.decode() for m in waiting])
    sent_s = db(lambda sm: _last_sent_again(sm, lost, flushed_at)) - flushed_at
    assert sent_s <= RESEND_BOUND_S, f"lost tasks sent again only after {sent_s:.1f}s"
    _note(
        f"FLUSHALL: {len(lost)} waiting messages lost, all sent again {sent_s:.1f}s after the "
        f"flush; all {creates} tasks ended {elapsed_s:.1f}s after it (bound {bound_s:.1f}s)"
    )


def test_broker_restarted_empty_mid_drain_sends_every_lost_task_again_within_seconds(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    site.delay_s = 1.0
    creates = 200
    queue = keys.broker_queue_key(servers_reset.settings.queue_name)
    redis_server = servers_reset.redis
    with scenario(
        "broker restarted empty mid-drain",
        servers_reset,
        db,
        site,
        broker,
        token,
        tmp_path,
        creates=creates,
        rate_per_s=150,
        **HEALTHY_LEASE,
    ) as run:
        run.after_creates(creates)
        _wait_for_busy_drain(run, queue, waiting_at_least=20)
        # Writes (fetches included) wait from here on, so what is read is what the stop loses.
        broker.client_pause(10_000, all=False)
        waiting = broker.lrange(queue, 0, -1)
        redis_server.stop()
        stopped_at = time.time()
        for path in redis_server.data_dir.iterdir():
            if path.name != "redis.log":
                path.unlink()
        redis_server.start()
        bound_s = _lost_work_bound_s(creates, site.delay_s)
        elapsed_s = recovery_s(db, db(_task_rows), stopped_at, bound_s, "every task to end")
        run.finish()
        lost = _check_loss_recovered(db, run, [m.decode() for m in waiting])
    sent_s = db(lambda sm: _last_sent_again(sm, lost, stopped_at)) - stopped_at
    assert sent_s <= RESEND_BOUND_S, f"lost tasks sent again only after {sent_s:.1f}s"
    _note(
        f"Redis restarted empty: {len(lost)} waiting messages lost, all sent again "
        f"{sent_s:.1f}s after the stop; all {creates} tasks ended {elapsed_s:.1f}s after it "
        f"(bound {bound_s:.1f}s)"
    )


def test_a_worker_killed_before_claiming_its_prefetch_has_those_messages_run_once(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    # Shortened from the product's 15 s to keep the test short; the leader's check interval
    # stays the product's.
    heartbeat_timeout_s = 6.0
    creates = 60
    queue = servers_reset.settings.queue_name
    env = {
        **HEALTHY_LEASE,
        "SCAN_BROKER_HEARTBEAT_TIMEOUT_S": str(heartbeat_timeout_s),
        # Claims wait for the targets' locks the test holds instead of deferring.
        "SCAN_TARGET_LOCK_TIMEOUT_S": "60",
    }
    with fault_stack(servers_reset, site, tmp_path, **env) as stack:
        driver = CreateDriver(stack.api_url, token, creates, concurrency=8, rate_per_s=100)
        victim = stack.workers["worker-a"]
        victim_pids = stack.pids(victim)
        domains = [outcome.domain for outcome in driver.outcomes]
        with target_hold(servers_reset.postgres.url, domains) as hold:
            run = Scenario(
                "worker SIGKILL before its claims", stack, driver.start(), db, site, broker
            )
            run.after_creates(creates)
            # Claim transactions wait on the held targets (the other claims queue behind them
            # in their worker); worker-a has fetched its fill.
            wait_until(
                lambda: hold.waiting_claims() > 0,
                STAGE_DEADLINE_S,
                "claim transactions to wait on the held targets",
            )
            fetched = wait_until(
                lambda: (m := _fetched_by(broker, victim_pids, queue)) and len(m) == FETCHED and m,
                STAGE_DEADLINE_S,
                f"worker-a to fetch {FETCHED} messages",
            )
            assert hold.waiting_claims() <= MAX_BLOCKED_CLAIMS, "more claim transactions open"
            assert db(_running_count) == 0, "a claim went through"
            assert not site.snapshot(), "a scan ran"
            stack.kill(victim)
            killed_at = time.time()
        prefetched = db(lambda sm: _tasks_of(sm, fetched))
        assert len(prefetched) == FETCHED
        bound_s = heartbeat_timeout_s + BROKER_CHECK_S + 5.0
        elapsed_s = recovery_s(db, prefetched, killed_at, bound_s, "worker-a's fetched tasks")
        run.finish()
    rows = db(_task_rows)
    # Given back by the broker, not sent again: the same message, no attempt charged.
    outcomes = {(rows[i].status, rows[i].attempts, rows[i].redispatches) for i in prefetched}
    assert outcomes == {("succeeded", 1, 0)}, outcomes
    assert {(r.status, r.attempts) for r in rows.values()} == {("succeeded", 1)}
    _note(
        f"worker SIGKILL before its claims: its {len(prefetched)} fetched tasks ended "
        f"{elapsed_s:.1f}s after the kill (heartbeat timeout {heartbeat_timeout_s}s, "
        f"bound {bound_s:.1f}s)"
    )


def test_a_worker_killed_mid_scan_has_its_claimed_tasks_run_again_after_the_lease(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    # The fault suite's 2 s lease and 0.3 s re-dispatch interval, the product's heartbeat
    # timeout (15 s) for the messages it had fetched and not claimed.
    lease_s = float(FAULT_ENV["SCAN_WORKER_LEASE_S"])
    redispatch_s = float(RELAY_ENV["SCAN_RELAY_REDISPATCH_INTERVAL_S"])
    site.delay_s = 1.0
    creates = 60
    with scenario(
        "worker SIGKILL after its claims",
        servers_reset,
        db,
        site,
        broker,
        token,
        tmp_path,
        creates=creates,
        rate_per_s=60,
    ) as run:
        victim = run.stack.workers["worker-a"]
        victim_pids = run.stack.pids(victim)
        run.after_creates(creates)
        wait_until(lambda: scanning_on(db, site, victim_pids), STAGE_DEADLINE_S, "worker-a scans")
        run.stack.kill(victim)
        killed_at = time.time()
        # What it still held when it died; nothing of it can move any more.
        killed = _running_on(db, victim_pids)
        assert killed, "worker-a held no scan when it died"
        # Started again by a claim that follows the lease's expiry and the next re-dispatch
        # (with room for the relay, the broker and a free slot on the surviving worker).
        bound_s = lease_s + redispatch_s + 4.0

        def started_again() -> list[float] | None:
            rows = db(_task_rows)
            again = [rows[i].started_at for i in killed if rows[i].attempts == 2]
            if len(again) < len(killed) or None in again:
                return None
            return [s.timestamp() - killed_at for s in again if s is not None]

        restarts = wait_until(started_again, bound_s, f"{len(killed)} killed scans to start again")
        assert max(restarts) <= bound_s, restarts
        elapsed_s = recovery_s(db, killed, killed_at, bound_s + 2 * site.delay_s, "killed scans")
        all_s = recovery_s(db, db(_task_rows), killed_at, STAGE_DEADLINE_S, "every task to end")
        run.finish()
    rows = db(_task_rows)
    outcomes = {(rows[i].status, rows[i].attempts, rows[i].redispatches) for i in killed}
    assert outcomes == {("succeeded", 2, 1)}, outcomes
    assert {r.status for r in rows.values()} == {"succeeded"}
    _note(
        f"worker SIGKILL mid-scan: its {len(killed)} claimed tasks started again "
        f"{min(restarts):.1f}-{max(restarts):.1f}s after the kill (lease {lease_s}s), ended by "
        f"{elapsed_s:.1f}s; every task ended {all_s:.1f}s after the kill"
    )
