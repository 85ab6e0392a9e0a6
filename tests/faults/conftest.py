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
from tests.faults.summary import FAULT_SECTIONS
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


def _summary_sections() -> list[tuple[str, list[str]]]:
    """What this process's fault scenarios measured, as (title, lines) sections."""
    sections = []
    if invariants.REPORTS:
        lines = [report.line() for report in invariants.REPORTS]
        sections.append(("fault suite: invariants verified", lines))
    if invariants.RECOVERY_TIMES:
        sections.append(("fault suite: recovery times", list(invariants.RECOVERY_TIMES)))
    sections.extend(
        ("load run: resident memory (MiB) as scans finished", [table])
        for table in invariants.MEMORY_TABLES
    )
    return sections


def pytest_sessionfinish(session: pytest.Session) -> None:
    # A parallel worker hands its sections to the controller, which prints them
    # (tests/conftest.py's pytest_testnodedown); `workeroutput` exists only on workers.
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[FAULT_SECTIONS] = _summary_sections()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for title, lines in _summary_sections():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)
