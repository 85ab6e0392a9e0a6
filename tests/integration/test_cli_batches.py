"""scanctl's batch, task and token commands against the real database: what they change, what
they print for scripts (--json), and one clear line with exit 1 when they cannot."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from bench.finished_batch import seed_finished_batch
from scanctl.main import app
from shared.db import batches, tasks
from shared.db.models import OutboxMessage, Task, User
from shared.messages import scan_entry
from shared.tokens import hash_token
from tests.helpers import make_user

runner = CliRunner()


async def invoke(*args: str) -> Result:
    """scanctl in a thread: its own event loop must not nest in the test's."""
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def new_batch(
    sessionmaker: async_sessionmaker[AsyncSession], user: User, *domains: str
) -> uuid.UUID:
    new = batches.NewBatch(
        id=uuid.uuid4(),
        user_id=user.id,
        config={},
        max_attempts=3,
        request_hash="h",
        idempotency_key=None,
        domains=list(domains),
        entries=[scan_entry(uuid.uuid4(), "scans") for _ in domains],
    )
    async with sessionmaker() as session, session.begin():
        await batches.insert_batch(session, new)
    return new.id


async def test_version_is_printed_and_exits_0() -> None:
    result = await invoke("--version")
    assert result.exit_code == 0
    assert result.output.startswith("scanctl ")
    assert result.output.split()[1][0].isdigit()


async def test_rotate_token_replaces_the_token_at_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    user, old = await make_user(sessionmaker, "dana")

    rotated = await invoke("users", "rotate-token", "dana")
    missing = await invoke("users", "rotate-token", "nobody")

    assert rotated.exit_code == 0, rotated.output
    new = rotated.output.strip()
    assert new != old
    async with sessionmaker() as session:
        stored = (await session.execute(select(User).where(User.id == user.id))).scalar_one()
    assert stored.token_hash == hash_token(new)
    assert (missing.exit_code, "no active user named 'nobody'" in missing.output) == (1, True)


async def test_tasks_cancel_then_retry_whoever_owns_the_task(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    user, _ = await make_user(sessionmaker, "erin")
    task_id = uuid.uuid4()
    async with sessionmaker() as session, session.begin():
        new = tasks.NewTask(user.id, "t.example.com", {}, 3)
        await tasks.insert_task_with_message(session, task_id, new, scan_entry(task_id, "scans"))

    cancelled = await invoke("tasks", "cancel", str(task_id), "--json")
    cancelled_again = await invoke("tasks", "cancel", str(task_id))
    retried = await invoke("tasks", "retry", str(task_id), "--json")
    retried_again = await invoke("tasks", "retry", str(task_id))
    not_an_id = await invoke("tasks", "retry", "nope")

    assert cancelled.exit_code == 0, cancelled.output
    assert json.loads(cancelled.output)["status"] == "cancelled"
    assert cancelled_again.exit_code == 1
    assert "a cancelled task cannot be cancelled" in cancelled_again.output
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.output) == {"id": str(task_id), "status": "pending", "attempts": 0}
    assert retried_again.exit_code == 1
    assert "a pending task cannot be retried" in retried_again.output
    assert not_an_id.exit_code == 1
    assert "is not a task id" in not_an_id.output
    async with sessionmaker() as session:
        messages = (
            (await session.execute(select(OutboxMessage).where(OutboxMessage.task_id == task_id)))
            .scalars()
            .all()
        )
    # The retry's message was committed with it: two messages, the create's and the retry's.
    assert len(messages) == 2


async def test_batches_list_show_cancel_and_results(
    sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    frank, _ = await make_user(sessionmaker, "frank")
    gina, _ = await make_user(sessionmaker, "gina")
    async with sessionmaker() as session, session.begin():
        finished = await seed_finished_batch(session, gina.id, 3)
    running = await new_batch(sessionmaker, frank, "a.example.com", "b.example.com")
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(Task)
            .where(Task.batch_id == running, Task.batch_position == 0)
            .values(status="succeeded", finished_at=Task.created_at)
        )

    listed = await invoke("batches", "list", "--json")
    only_frank = await invoke("batches", "list", "--user", "frank", "--json")
    cancelled = await invoke("batches", "cancel", str(running), "--json")
    shown = await invoke("batches", "show", str(running), "--json")
    ndjson = await invoke("batches", "results", str(finished))
    csv_file = tmp_path / "results.csv"
    csv_out = await invoke(
        "batches", "results", str(finished), "--format", "csv", "-o", str(csv_file)
    )
    unknown = await invoke("batches", "show", str(uuid.uuid4()))

    assert [b["id"] for b in json.loads(listed.output)] == [str(running), str(finished)]
    assert [b["user"] for b in json.loads(only_frank.output)] == ["frank"]
    assert json.loads(cancelled.output)["cancelled"] == 1
    assert json.loads(shown.output)["counts"] == {"succeeded": 1, "cancelled": 1}
    assert json.loads(shown.output)["done"] is True
    lines = [json.loads(line) for line in ndjson.output.splitlines()]
    assert [line["target_domain"] for line in lines] == [f"site-{n}.example.com" for n in (1, 2, 3)]
    assert csv_out.exit_code == 0, csv_out.output
    assert csv_file.read_text().splitlines()[0].startswith("task_id,target_domain,status")
    assert len(csv_file.read_text().splitlines()) == 4
    assert (unknown.exit_code, "no batch" in unknown.output) == (1, True)
