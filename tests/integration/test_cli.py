"""scanctl against the real database: tokens shown once, clear one-line errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from scanctl.main import app
from shared.db.models import User
from shared.embedded import EmbeddedUrls, free_port
from shared.tokens import hash_token

runner = CliRunner()


async def invoke(*args: str) -> Result:
    """scanctl in a thread: its own event loop must not nest in the test's."""
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def test_users_lifecycle(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    created = await invoke("users", "create", "carol", "--admin")
    assert created.exit_code == 0, created.output
    token = created.output.strip()
    async with sessionmaker() as session:
        user = (await session.execute(select(User))).scalar_one()
    assert user.token_hash == hash_token(token)
    assert token not in user.token_hash
    assert user.is_admin

    duplicate = await invoke("users", "create", "carol")
    assert duplicate.exit_code == 1
    assert "already exists" in duplicate.output
    assert "Traceback" not in duplicate.output

    listed = await invoke("users", "list")
    assert "carol" in listed.output
    assert token not in listed.output

    assert (await invoke("users", "revoke", "carol")).exit_code == 0
    again = await invoke("users", "revoke", "carol")
    assert again.exit_code == 1
    assert "no active user" in again.output


def test_unreachable_database_is_one_clear_line_and_exit_1(servers: EmbeddedUrls) -> None:
    env = {"DATABASE_URL": f"postgresql://x@127.0.0.1:{free_port()}/db", "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-m", "scanctl.main", "users", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "database is unreachable" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
