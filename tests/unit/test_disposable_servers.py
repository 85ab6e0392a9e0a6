"""The suite runs only against servers that look disposable, unless told otherwise."""

from __future__ import annotations

import pytest

from tests.disposable import database_refusal, redis_refusal, refusal

LOCAL_TEST_DB = "postgresql://scan:pw@127.0.0.1:5432/scan_test"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    "url",
    [
        LOCAL_TEST_DB,
        "postgresql+asyncpg://scan@localhost/test",
        "postgresql://postgres@[::1]:5433/outbox_TEST_1",
        "postgresql://postgres:@/scan_test?host=/tmp/pg",
        "postgresql:///tests",
    ],
)
def test_a_local_database_named_for_tests_is_disposable(url: str) -> None:
    assert database_refusal(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://scan@db.internal:5432/scan_test", "host 'db.internal'"),
        ("postgresql://scan@10.0.0.5/scan_test", "host '10.0.0.5'"),
        ("postgresql://scan@127.0.0.1/scan_outbox", "database name 'scan_outbox'"),
        ("postgresql://postgres:@/postgres?host=/tmp/pg", "database name 'postgres'"),
        ("not a url", "not a database URL"),
    ],
)
def test_a_remote_or_unnamed_database_is_refused_saying_why(url: str, reason: str) -> None:
    assert reason in (database_refusal(url) or "")


@pytest.mark.parametrize(
    "url", [LOCAL_REDIS, "redis://:pw@localhost:6380/3", "unix:///tmp/redis.sock"]
)
def test_a_local_redis_is_disposable(url: str) -> None:
    assert redis_refusal(url) is None


@pytest.mark.parametrize(
    "url", ["redis://cache.internal:6379/0", "rediss://10.1.2.3:6380/0", "http://127.0.0.1/"]
)
def test_a_remote_redis_is_refused(url: str) -> None:
    assert redis_refusal(url)


def test_no_urls_means_embedded_servers_and_no_refusal() -> None:
    assert refusal({}) is None


def test_local_test_servers_are_accepted() -> None:
    assert refusal({"DATABASE_URL": LOCAL_TEST_DB, "REDIS_URL": LOCAL_REDIS}) is None


def test_the_refusal_names_each_server_and_the_way_out_but_no_password() -> None:
    message = refusal(
        {
            "DATABASE_URL": "postgresql://scan:s3cret@db.internal/scan",
            "REDIS_URL": "redis://:hunter2@cache.internal:6379/0",
        }
    )
    assert message is not None
    assert "DATABASE_URL=postgresql://scan:***@db.internal/scan" in message
    assert "REDIS_URL=redis://:***@cache.internal:6379/0" in message
    assert "truncate every table and flush Redis" in message
    assert "SCAN_TEST_ALLOW_DESTRUCTIVE=1" in message
    assert "s3cret" not in message
    assert "hunter2" not in message


def test_one_non_disposable_url_is_enough_to_refuse() -> None:
    assert refusal({"DATABASE_URL": LOCAL_TEST_DB, "REDIS_URL": "redis://cache.internal/0"})


def test_the_explicit_allowance_lets_any_server_through() -> None:
    environ = {
        "DATABASE_URL": "postgresql://scan@db.internal/scan",
        "REDIS_URL": "redis://cache.internal/0",
        "SCAN_TEST_ALLOW_DESTRUCTIVE": "1",
    }
    assert refusal(environ) is None
    assert refusal({**environ, "SCAN_TEST_ALLOW_DESTRUCTIVE": "yes"})
