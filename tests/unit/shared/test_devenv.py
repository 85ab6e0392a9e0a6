"""The env file `scanctl dev` writes: private, shell-readable, and ignored when the
environment names its own servers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shared import devenv
from shared.embedded import EmbeddedUrls

URLS = EmbeddedUrls(
    database_url="postgresql://postgres:@/postgres?host=/tmp/a dir/pg",
    redis_url="redis://127.0.0.1:6390/0",
)


def test_the_file_is_private_and_reads_back_the_urls(tmp_path: Path) -> None:
    path = devenv.write(tmp_path, URLS)
    assert path.stat().st_mode & 0o777 == 0o600
    assert devenv.read(path) == {"DATABASE_URL": URLS.database_url, "REDIS_URL": URLS.redis_url}
    assert [p.name for p in tmp_path.iterdir()] == ["dev.env"]


def test_a_shell_sources_the_same_urls(tmp_path: Path) -> None:
    path = devenv.write(tmp_path, URLS)
    shown = subprocess.run(
        ["sh", "-c", 'set -a; . "$0"; printf "%s\\n%s" "$DATABASE_URL" "$REDIS_URL"', path],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout
    assert shown.splitlines() == [URLS.database_url, URLS.redis_url]


def test_the_file_is_read_only_when_the_environment_names_no_server(tmp_path: Path) -> None:
    path = devenv.write(tmp_path, URLS)
    assert devenv.file_to_read({}, tmp_path) == path
    assert devenv.file_to_read({"SCAN_LOG_LEVEL": "DEBUG"}, tmp_path) == path
    for name in devenv.URL_VARIABLES:
        assert devenv.file_to_read({name: "redis://elsewhere/0"}, tmp_path) is None


def test_no_file_without_a_running_dev_stack(tmp_path: Path) -> None:
    assert devenv.file_to_read({}, tmp_path) is None


@pytest.mark.parametrize("name", ["DATABASE_URL", "REDIS_URL"])
def test_a_rewrite_replaces_the_old_urls(tmp_path: Path, name: str) -> None:
    devenv.write(tmp_path, EmbeddedUrls("postgresql://old/db", "redis://old:1/0"))
    devenv.write(tmp_path, URLS)
    assert devenv.read(devenv.env_file(tmp_path))[name] == getattr(URLS, name.lower())
