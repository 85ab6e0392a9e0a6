"""Migrations on a database of their own: every revision goes down and up again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from shared.db import migrate
from shared.embedded import EmbeddedUrls
from tests.helpers import scanctl


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def scratch_database_url(servers: EmbeddedUrls) -> Iterator[str]:
    name = f"scratch_{uuid.uuid4().hex[:10]}"

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(servers.database_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(servers.database_url, name)
    finally:
        asyncio.run(run(f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_check_fails_before_migration_and_passes_after(scratch_database_url: str) -> None:
    env = {"DATABASE_URL": scratch_database_url}
    before = scanctl("migrate", "--check", env=env)
    assert before.returncode == 1
    assert "the code needs" in before.stderr
    assert "Traceback" not in before.stderr

    assert scanctl("migrate", env=env).returncode == 0
    after = scanctl("migrate", "--check", env=env)
    assert after.returncode == 0, after.stderr
    assert migrate.head_revision() in after.stdout


def test_every_revision_downgrades_and_upgrades_again(scratch_database_url: str) -> None:
    migrate.upgrade(scratch_database_url)
    head = migrate.head_revision()
    migrate.downgrade(scratch_database_url, "base")
    assert asyncio.run(migrate.current_revision(scratch_database_url)) is None
    migrate.upgrade(scratch_database_url)
    assert asyncio.run(migrate.current_revision(scratch_database_url)) == head


def test_concurrent_migrations_queue_instead_of_racing(scratch_database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": scratch_database_url}
    command = [sys.executable, "-m", "scanctl.main", "migrate"]
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert asyncio.run(migrate.current_revision(scratch_database_url)) == migrate.head_revision()
