"""Fixtures shared by the end-to-end tests: a local site and the three real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.embedded import EmbeddedUrls
from tests.e2e.stack import Stack, new_stack
from tests.sites import Site, local_site


@pytest.fixture
def site() -> Iterator[Site]:
    with local_site() as site:
        yield site


@pytest.fixture
def stack(servers: EmbeddedUrls, site: Site, tmp_path: Path, clean_state: None) -> Iterator[Stack]:
    """API, relay and worker on a clean database; each must stop cleanly on SIGTERM."""
    stack = new_stack(servers.database_url, servers.redis_url, site.port, tmp_path)
    stack.start_all()
    try:
        yield stack
    finally:
        stack.assert_stopped_cleanly(stack.stop_all())
