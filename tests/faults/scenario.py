"""The frame every fault scenario shares: start the stack, drive creates, strike, then check."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.e2e.relays import Db
from tests.faults import invariants
from tests.faults.client import CreateDriver
from tests.faults.harness import FaultStack, fault_stack
from tests.faults.servers import FaultServers
from tests.faults.site import CountingSite
from tests.helpers import wait_until

CREATES_DEADLINE_S = 90.0
END_DEADLINE_S = 90.0


@dataclass
class Scenario:
    name: str
    stack: FaultStack
    driver: CreateDriver
    db: Db
    site: CountingSite
    broker: redis.Redis

    def after_creates(self, count: int, deadline_s: float = 60.0) -> None:
        """Wait until `count` creates have had their answer."""
        wait_until(lambda: self.driver.done >= count, deadline_s, f"{count} creates answered")

    def finish(self, *, all_succeed: bool = True) -> invariants.InvariantReport:
        """Let the creates end, replay the unknown ones, and check the invariants."""
        self.driver.join(CREATES_DEADLINE_S)
        self.driver.replay_unknown()
        evidence = invariants.Evidence(self.driver.outcomes, self.site, self.stack, self.broker)
        return invariants.check(
            self.name, self.db, evidence, deadline_s=END_DEADLINE_S, all_succeed=all_succeed
        )


@contextmanager
def scenario(
    name: str,
    servers: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    log_dir: Path,
    *,
    creates: int,
    rate_per_s: float,
    concurrency: int = 8,
    **env: str,
) -> Iterator[Scenario]:
    """The stack running with creates flowing into it from `concurrency` clients."""
    with fault_stack(servers, site, log_dir, **env) as stack:
        driver = CreateDriver(stack.api_url, token, creates, concurrency, rate_per_s)
        yield Scenario(name, stack, driver.start(), db, site, broker)


async def _running(sessionmaker: async_sessionmaker[AsyncSession]) -> list[tuple[str, str, str]]:
    sql = text("SELECT id::text, target_domain, lease_owner FROM tasks WHERE status = 'running'")
    async with sessionmaker() as session:
        return [(row[0], row[1], row[2]) for row in (await session.execute(sql)).all()]


def scanning_on(db: Db, site: CountingSite, pids: set[int]) -> list[str] | None:
    """Ids of the tasks a process in `pids` holds the lease of (owner is `host:pid`), once at
    least one of them has its fetch in flight at the site; None before."""
    held = [
        (task_id, domain)
        for task_id, domain, owner in db(_running)
        if owner and int(owner.rpartition(":")[2]) in pids
    ]
    fetched = site.snapshot()
    if not any(fetched[domain] for _, domain in held):
        return None
    return [task_id for task_id, _ in held]
