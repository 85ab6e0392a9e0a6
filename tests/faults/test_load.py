"""Load: a few thousand creates from many clients while the workers drain them; every one
succeeds exactly once, nothing else fails, and no process's memory keeps growing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.e2e.relays import Db
from tests.faults import invariants
from tests.faults.client import CreateDriver
from tests.faults.harness import HEALTHY_LEASE, fault_stack
from tests.faults.memory import MemorySamples
from tests.faults.servers import FaultServers
from tests.faults.site import CountingSite, counting_site
from tests.helpers import wait_until

# One worker runs the fault scenarios in turn (`--dist loadgroup`): one set of restartable
# servers, and no two scenarios' stacks competing for the CPUs while recovery deadlines run.
pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("faults")]
CREATES = 2000
CLIENTS = 48
MILESTONES = (0.25, 0.5, 0.75, 1.0)
RUN_DEADLINE_S = 150.0
# Between the half-way and the final sample: allocator noise and warm caches, not a leak.
MAX_GROWTH_MIB = 24.0
MAX_GROWTH_RATIO = 0.25


@pytest.fixture
def fast_site() -> Iterator[CountingSite]:
    with counting_site() as running:
        yield running


async def _finished(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    sql = text("SELECT count(*) FROM tasks WHERE status IN ('succeeded', 'failed', 'cancelled')")
    async with sessionmaker() as session:
        return int((await session.execute(sql)).scalar_one())


@pytest.mark.timeout(300)
def test_two_thousand_creates_from_many_clients_all_run_once_in_flat_memory(
    servers_reset: FaultServers,
    db: Db,
    fast_site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    # No fault here: what is asserted is that a healthy load needs no recovery at all.
    with fault_stack(servers_reset, fast_site, tmp_path, **HEALTHY_LEASE) as stack:
        memory = MemorySamples(
            {
                **{name: psutil.Process(s.process.pid) for name, s in stack.processes_by_name()},
                "postgres": psutil.Process(servers_reset.postgres.server.get_pid()),
                "redis": psutil.Process(servers_reset.redis.process.pid),  # type: ignore[union-attr]
            }
        )
        driver = CreateDriver(stack.api_url, token, CREATES, CLIENTS, rate_per_s=400).start()
        # The run's progress is scans finished: creates and scans overlap throughout.
        for milestone in MILESTONES[:-1]:
            wanted = int(CREATES * milestone)
            wait_until(
                lambda wanted=wanted: db(_finished) >= min(wanted, driver.accepted_so_far()),
                RUN_DEADLINE_S,
                f"{wanted} scans to finish",
                every_s=0.2,
            )
            memory.take(f"{int(milestone * 100)}%")
        driver.join(RUN_DEADLINE_S)
        assert driver.tally() == {"201": CREATES}, [
            (o.index, o.detail) for o in driver.outcomes if not o.accepted
        ]
        evidence = invariants.Evidence(driver.outcomes, fast_site, stack, broker)
        report = invariants.check("load", db, evidence, deadline_s=RUN_DEADLINE_S)
        memory.take("100%")
    invariants.MEMORY_TABLES.append(memory.table())
    assert (report.rerun_tasks, report.site_fetches) == (0, CREATES), report.line()
    assert len({uuid.UUID(o.task_id) for o in driver.outcomes if o.task_id}) == CREATES
    growth = memory.growth("50%", "100%")
    ours = [name for name in memory.roots if name not in ("postgres", "redis")]
    for name in ours:
        bound = max(MAX_GROWTH_MIB, memory.samples["50%"][name] * MAX_GROWTH_RATIO)
        assert growth[name] <= bound, f"{name} grew {growth[name]:.1f} MiB\n{memory.table()}"
