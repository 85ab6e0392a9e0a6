"""`scanctl callbacks list|replay` against the real database."""

from __future__ import annotations

import asyncio
import json
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from scanctl.main import app
from tests.helpers import make_user

runner = CliRunner()


async def invoke(*args: str) -> Result:
    """scanctl in a thread: its own event loop must not nest in the test's."""
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def add_delivery(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: int, *, dead: bool
) -> int:
    async with sessionmaker() as session, session.begin():
        row_id: int = (
            await session.execute(
                text(
                    "INSERT INTO deliveries (delivery_id, user_id, url, payload, attempts, "
                    "last_status, last_error, dead_at) "
                    "VALUES (:d, :u, 'https://hooks.example.com/x', "
                    "'{\"event\": \"task.finished\"}', 10, 500, 'HTTP 500', "
                    "CASE WHEN :dead THEN now() END) RETURNING id"
                ),
                {"d": uuid.uuid4(), "u": user_id, "dead": dead},
            )
        ).scalar_one()
    return row_id


async def test_list_shows_dead_deliveries_and_replay_makes_them_pending(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    dead = await add_delivery(sessionmaker, user.id, dead=True)
    pending = await add_delivery(sessionmaker, user.id, dead=False)

    listed = await invoke("callbacks", "list", "--state", "dead", "--json")
    replayed = await invoke("callbacks", "replay", str(dead))
    again = await invoke("callbacks", "replay", str(pending))
    after = await invoke("callbacks", "list", "--json")

    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)
    assert (row["id"], row["state"], row["last_status"], row["event"]) == (
        dead,
        "dead",
        500,
        "task.finished",
    )
    assert replayed.exit_code == 0, replayed.output
    assert "1 dead deliveries replayed" in replayed.output
    assert again.exit_code == 1
    assert "not dead" in again.output
    states = {r["id"]: (r["state"], r["attempts"]) for r in json.loads(after.output)}
    assert states == {dead: ("pending", 0), pending: ("pending", 10)}


async def test_replay_needs_ids_or_all_dead(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    for _ in range(2):
        await add_delivery(sessionmaker, user.id, dead=True)

    neither = await invoke("callbacks", "replay")
    everything = await invoke("callbacks", "replay", "--all-dead", "--json")

    assert neither.exit_code == 1
    assert "either delivery IDs or --all-dead" in neither.output
    assert json.loads(everything.output) == {"replayed": 2}


async def test_full_cleanup_expires_old_batch_idempotency_keys(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    async with sessionmaker() as session, session.begin():
        for key, hours in (("old-key", 48), ("new-key", 1)):
            await session.execute(
                text(
                    "INSERT INTO batches (id, user_id, config, task_count, idempotency_key, "
                    "request_hash, created_at) VALUES (:id, :u, '{}', 0, :key, 'h', "
                    "now() - make_interval(hours => :hours))"
                ),
                {"id": uuid.uuid4(), "u": user.id, "key": key, "hours": hours},
            )

    dry = await invoke("full-cleanup", "--dry-run", "--json")
    done = await invoke("full-cleanup", "--json")

    assert json.loads(dry.stdout)["steps"]["batch_idempotency"] == {
        "batch_idempotency_keys_expired": 1
    }
    assert json.loads(done.stdout)["steps"]["batch_idempotency"] == {
        "batch_idempotency_keys_expired": 1
    }
    async with sessionmaker() as session:
        keys = (await session.execute(text("SELECT idempotency_key FROM batches"))).scalars()
        assert sorted(str(key) for key in keys) == ["None", "new-key"]
