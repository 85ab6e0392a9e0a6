"""Fixtures of the fault suite: its own restartable servers, a clean slate per test, the site."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.e2e.relays import Db
from tests.faults import invariants
from tests.faults.servers import FaultServers, fault_servers
from tests.faults.site import CountingSite, counting_site
from tests.helpers import make_user


@pytest.fixture(scope="session")
def own_servers() -> Iterator[FaultServers]:
    """PostgreSQL and Redis only this suite uses, since its tests stop and restart them."""
    with (
        tempfile.TemporaryDirectory(prefix="scan-outbox-faults-") as tmp,
        fault_servers(Path(tmp)) as servers,
    ):
        yield servers


@pytest.fixture
def servers_reset(own_servers: FaultServers) -> Iterator[FaultServers]:
    own_servers.reset()
    yield own_servers
    own_servers.ensure_running()


@pytest.fixture
def db(servers_reset: FaultServers) -> Iterator[Db]:
    database = Db(servers_reset.settings)
    yield database
    database.close()


@pytest.fixture
def broker(servers_reset: FaultServers) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(servers_reset.redis.url)
    yield client
    client.close()


@pytest.fixture
def token(db: Db) -> str:
    _user, token = db(lambda sm: make_user(sm, "faults"))
    return token


@pytest.fixture
def site() -> Iterator[CountingSite]:
    # Slow enough that scans are in flight when a fault strikes.
    with counting_site(delay_s=0.3) as running:
        yield running


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if invariants.REPORTS:
        terminalreporter.section("fault suite: invariants verified")
        for report in invariants.REPORTS:
            terminalreporter.write_line(report.line())
    if invariants.RECOVERY_TIMES:
        terminalreporter.section("fault suite: recovery times")
        for line in invariants.RECOVERY_TIMES:
            terminalreporter.write_line(line)
    for table in invariants.MEMORY_TABLES:
        terminalreporter.section("load run: resident memory (MiB) as scans finished")
        terminalreporter.write_line(table)
