"""The embedded Redis: `scanctl dev`'s keeps its data across a restart, the tests' do not."""

from __future__ import annotations

from pathlib import Path

import redis

from shared.embedded import RedisProcess


def restarted_value(data_dir: Path, *, persistent: bool) -> bytes | None:
    """Write a key, stop the server, start a new one on the same folder, read the key back."""
    first = RedisProcess(data_dir, persistent=persistent)
    first.start()
    try:
        with redis.Redis.from_url(first.url) as client:
            client.set("kept", "yes")
    finally:
        first.stop()
    second = RedisProcess(data_dir, persistent=persistent)
    second.start()
    try:
        with redis.Redis.from_url(second.url) as client:
            value: bytes | None = client.get("kept")
            return value
    finally:
        second.stop()


def test_a_persistent_redis_keeps_its_keys_across_a_restart(tmp_path: Path) -> None:
    assert restarted_value(tmp_path / "redis", persistent=True) == b"yes"
    assert (tmp_path / "redis" / "appendonly.aof").exists()


def test_the_tests_redis_starts_empty_after_a_restart(tmp_path: Path) -> None:
    assert restarted_value(tmp_path / "redis", persistent=False) is None
    assert not (tmp_path / "redis" / "appendonly.aof").exists()
