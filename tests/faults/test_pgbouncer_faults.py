"""The fault suite's core cases with every service's pooled connections going through a real
PgBouncer in transaction mode (sessions on the direct URL): a drain under creates, a killed
worker, a killed relay; the same invariants as directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.e2e.relays import Db
from tests.faults.scenario import scanning_on, scenario
from tests.faults.servers import FaultServers
from tests.faults.site import CountingSite
from tests.helpers import wait_until
from tests.pgbouncer import PgBouncer, pgbouncer, pooled_env

# One worker runs the fault scenarios in turn (`--dist loadgroup`): one set of restartable
# servers, and no two scenarios' stacks competing for the CPUs while recovery deadlines run.
pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("faults")]
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def fault_pooler(
    own_servers: FaultServers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgBouncer]:
    with pgbouncer(own_servers.postgres.url, tmp_path_factory.mktemp("pgbouncer")) as running:
        yield running


@pytest.fixture
def pooled(servers_reset: FaultServers, fault_pooler: PgBouncer) -> dict[str, str]:
    return pooled_env(fault_pooler, servers_reset.postgres.url)


def test_a_drain_through_pgbouncer_runs_every_task_once(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
    pooled: dict[str, str],
    fault_pooler: PgBouncer,
) -> None:
    logins_before = fault_pooler.logins()
    with scenario(
        "drain through PgBouncer",
        servers_reset,
        db,
        site,
        broker,
        token,
        tmp_path,
        creates=300,
        rate_per_s=100,
        **pooled,
    ) as run:
        report = run.finish()
    assert report.rerun_tasks == 0, report.line()
    assert fault_pooler.logins() > logins_before


def test_a_worker_killed_mid_scan_behind_pgbouncer_has_its_tasks_run_again(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
    pooled: dict[str, str],
) -> None:
    with scenario(
        "worker SIGKILL mid-scan through PgBouncer",
        servers_reset,
        db,
        site,
        broker,
        token,
        tmp_path,
        creates=150,
        rate_per_s=30,
        SCAN_QUEUED_STALE_S="5",
        **pooled,
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


def test_a_relay_killed_behind_pgbouncer_leaves_the_other_to_publish_everything(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
    pooled: dict[str, str],
) -> None:
    with scenario(
        "relay SIGKILL through PgBouncer",
        servers_reset,
        db,
        site,
        broker,
        token,
        tmp_path,
        creates=150,
        rate_per_s=40,
        **pooled,
    ) as run:
        run.after_creates(40)
        run.stack.kill(run.stack.relays["relay-a"].service)
        run.finish()
