"""Redis behind Sentinel: the primary dies mid-drain and its replica, which missed the last
writes, is promoted. Every process finds the new primary through the Sentinels, the relay
leader sees a different broker (its run id) and walks every queued task, the messages the
replica never received are sent again, and every task ends once, within seconds.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import keys
from tests.e2e.relays import Db
from tests.faults import invariants
from tests.faults.harness import HEALTHY_LEASE, WORKER_CONCURRENCY
from tests.faults.scenario import scenario
from tests.faults.sentinels import MASTER, SentinelCluster, sentinel_cluster, wait_for_failover
from tests.faults.servers import FaultServers
from tests.faults.site import CountingSite
from tests.helpers import wait_until

# One worker runs the fault scenarios in turn (`--dist loadgroup`): one set of restartable
# servers, and no two scenarios' stacks competing for the CPUs while recovery deadlines run.
pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("faults")]

STAGE_DEADLINE_S = 60.0
# The promise: every task ends within this of the primary's death.
FAILOVER_RECOVERY_S = 20.0
# Sentinel's down-after (0.5 s), the vote and the promotion took 1.9 s here.
PROMOTION_DEADLINE_S = 10.0


@pytest.fixture
def cluster(servers_reset: FaultServers) -> Iterator[SentinelCluster]:
    with (
        tempfile.TemporaryDirectory(prefix="scan-outbox-sentinel-") as tmp,
        sentinel_cluster(Path(tmp)) as running,
    ):
        yield running


@pytest.fixture
def primary_client(cluster: SentinelCluster) -> Iterator[redis.Redis]:
    client = cluster.client()
    yield client
    client.close()


async def _draining(sessionmaker: async_sessionmaker[AsyncSession]) -> bool:
    """Workers busy, and many tasks still to run."""
    sql = text(
        "SELECT count(*) FILTER (WHERE status = 'running'),"
        " count(*) FILTER (WHERE status IN ('pending', 'queued')) FROM tasks"
    )
    async with sessionmaker() as session:
        running, waiting = (await session.execute(sql)).one()
    return bool(running >= WORKER_CONCURRENCY and waiting >= 40)


async def _published_since(sessionmaker: async_sessionmaker[AsyncSession], since: float) -> int:
    sql = text("SELECT count(*) FROM outbox WHERE published_at > to_timestamp(:since)")
    async with sessionmaker() as session:
        return int((await session.execute(sql, {"since": since})).scalar_one())


async def _queued_since(
    sessionmaker: async_sessionmaker[AsyncSession], since: float
) -> dict[str, str]:
    """Queued tasks whose message went out after `since`: task id → broker message id."""
    sql = text(
        "SELECT t.id::text, o.broker_message_id::text FROM tasks t"
        " JOIN outbox o ON o.task_id = t.id AND o.published_at > to_timestamp(:since)"
        " WHERE t.status = 'queued'"
    )
    async with sessionmaker() as session:
        rows = (await session.execute(sql, {"since": since})).all()
    return {row[0]: row[1] for row in rows}


async def _redispatched(sessionmaker: async_sessionmaker[AsyncSession], ids: list[str]) -> int:
    sql = text("SELECT count(*) FROM tasks WHERE id::text = ANY(:ids) AND redispatches >= 1")
    async with sessionmaker() as session:
        return int((await session.execute(sql, {"ids": ids})).scalar_one())


async def _unfinished(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    terminal = ", ".join(f"'{status}'" for status in sorted(invariants.TERMINAL))
    sql = text(f"SELECT count(*) FROM tasks WHERE status NOT IN ({terminal})")
    async with sessionmaker() as session:
        return int((await session.execute(sql)).scalar_one())


async def _last_finished(sessionmaker: async_sessionmaker[AsyncSession]) -> float:
    sql = text("SELECT extract(epoch FROM max(finished_at)) FROM tasks")
    async with sessionmaker() as session:
        return float((await session.execute(sql)).scalar_one())


# Its own bounds (20 s from the kill) decide; the rest is starting and stopping five services
# and five Redis processes on a shared machine.
@pytest.mark.timeout(240)
def test_the_primary_killed_mid_drain_fails_over_and_every_task_ends_once_within_seconds(
    servers_reset: FaultServers,
    cluster: SentinelCluster,
    primary_client: redis.Redis,
    db: Db,
    site: CountingSite,
    token: str,
    tmp_path: Path,
) -> None:
    # Slower scans than creates: a backlog builds up behind the busy workers.
    site.delay_s = 2.0
    creates = 120
    messages_key = keys.broker_messages_key(servers_reset.settings.queue_name)
    env = {
        **HEALTHY_LEASE,
        # Only its password, db and scheme count: the primary is whatever the Sentinels say.
        "REDIS_URL": "redis://unused.invalid:6379/0",
        "REDIS_SENTINELS": cluster.sentinel_addresses,
        "REDIS_SENTINEL_MASTER": MASTER,
        # Workers fetch only what they run: the rest of the relay's window waits in the
        # broker's queue, where a failover to a replica that missed it loses it.
        "SCAN_WORKER_PREFETCH": "0",
    }
    with scenario(
        "Redis primary killed mid-drain, replica promoted by Sentinel",
        servers_reset,
        db,
        site,
        primary_client,
        token,
        tmp_path,
        creates=creates,
        rate_per_s=150,
        concurrency=8,
        **env,
    ) as run:
        wait_until(lambda: db(_draining), STAGE_DEADLINE_S, "a drain under way")
        # The leader has met this broker (its epoch is on the primary and the replica).
        wait_until(
            lambda: primary_client.exists(keys.BROKER_EPOCH_KEY),
            STAGE_DEADLINE_S,
            "the leader's broker epoch",
        )
        # From here the replica receives nothing: what the relay publishes next, and the
        # workers' fetches and acks, reach the primary alone.
        held_at = time.time()
        cluster.link.hold()
        wait_until(
            lambda: db(lambda sm: _published_since(sm, held_at)) >= 20,
            STAGE_DEADLINE_S,
            "messages published that the replica never receives",
        )
        cluster.primary.kill()
        killed_at = time.time()
        cluster.link.close()
        # Nothing is fetched or published until a new primary is named.
        unseen = db(lambda sm: _queued_since(sm, held_at))
        promoted_at = wait_for_failover(cluster, PROMOTION_DEADLINE_S)
        # The premise: the promoted replica lacks messages of tasks still queued.
        missing = [
            task_id
            for task_id, message_id in unseen.items()
            if not primary_client.hexists(messages_key, message_id)
        ]
        run.after_creates(creates)
        wait_until(
            lambda: db(_unfinished) == 0,
            max(0.0, killed_at + FAILOVER_RECOVERY_S - time.time()),
            f"every task to end within {FAILOVER_RECOVERY_S:.0f}s of the primary's death",
            every_s=0.25,
        )
        ended_s = db(_last_finished) - killed_at
        report = run.finish()
    assert report.succeeded == creates, report.line()
    assert missing, "the replica received every message: the test proved nothing"
    # They waited at the tail of the queue (workers fetch only what they run), so no worker
    # held them: the leader's walk found each one gone and sent its task again.
    resent = db(lambda sm: _redispatched(sm, missing))
    assert resent == len(missing), f"{len(missing) - resent} lost messages were never re-sent"
    relay_events = {r.get("event") for r in invariants.log_records(run.stack.all_logs("relay"))}
    assert "broker_restarted" in relay_events, relay_events
    assert "queued_messages_lost" in relay_events, relay_events
    invariants.RECOVERY_TIMES.append(
        f"Sentinel failover: promoted {promoted_at - killed_at:.1f}s after the primary's "
        f"SIGKILL; the replica missed {len(missing)} messages, {resent} sent again; all "
        f"{creates} tasks ended {ended_s:.1f}s after the kill (bound {FAILOVER_RECOVERY_S:.0f}s)"
    )
