"""Parallel workers on given servers each get their own database and Redis db."""

from __future__ import annotations

import pytest

from shared.embedded import EmbeddedUrls
from tests.given_servers import worker_number, worker_urls


def test_each_worker_gets_its_own_database_and_redis_db() -> None:
    given = EmbeddedUrls(
        database_url="postgresql://scan:pw@127.0.0.1:5432/scan_test",
        redis_url="redis://127.0.0.1:6379/2",
    )
    first, second = worker_urls(given, 0), worker_urls(given, 3)
    assert first.database_url == "postgresql://scan:pw@127.0.0.1:5432/scan_test_gw0"
    assert second.database_url == "postgresql://scan:pw@127.0.0.1:5432/scan_test_gw3"
    assert (first.redis_url, second.redis_url) == (
        "redis://127.0.0.1:6379/2",
        "redis://127.0.0.1:6379/5",
    )


def test_a_unix_socket_database_keeps_its_socket_folder() -> None:
    given = EmbeddedUrls(
        database_url="postgresql://postgres:@/scan_test?host=/tmp/pg",
        redis_url="redis://127.0.0.1:6379",
    )
    urls = worker_urls(given, 1)
    assert urls.database_url == "postgresql://postgres:@/scan_test_gw1?host=%2Ftmp%2Fpg"
    assert urls.redis_url == "redis://127.0.0.1:6379/1"


def test_the_worker_number_comes_from_pytest_xdist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    assert worker_number() == 7
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert worker_number() is None
