"""scanctl's operator commands as real processes against PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from typing import Any

import redis
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import keys
from shared.db import outbox, tasks
from shared.db.models import OutboxMessage, Task
from shared.embedded import free_port
from shared.messages import scan_entry
from tests.helpers import make_user, scanctl

Sessions = async_sessionmaker[AsyncSession]


async def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """scanctl in a thread, so the test's event loop keeps serving its own connections."""
    return await asyncio.to_thread(scanctl, *args, env=env)


async def run_json(*args: str, **env: str) -> Any:
    result = await run(*args, "--json", **env)
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


async def make_task(
    sessionmaker: Sessions, user_id: int, domain: str, key: str | None = None
) -> uuid.UUID:
    task_id = uuid.uuid4()
    new = tasks.NewTask(user_id, domain, {}, 3, idempotency_key=key)
    async with sessionmaker() as session, session.begin():
        await tasks.insert_task_with_message(session, task_id, new, scan_entry(task_id, "scans"))
    return task_id


async def execute(sessionmaker: Sessions, sql: str, **params: object) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(text(sql), params)


async def outbox_id_of(sessionmaker: Sessions, task_id: uuid.UUID) -> int:
    async with sessionmaker() as session:
        stmt = select(OutboxMessage.id).where(OutboxMessage.task_id == task_id)
        return (await session.execute(stmt)).scalar_one()


async def kill_message(sessionmaker: Sessions, task_id: uuid.UUID, error: str) -> int:
    outbox_id = await outbox_id_of(sessionmaker, task_id)
    async with sessionmaker() as session, session.begin():
        await outbox.mark_dead(session, outbox_id, error)
    return outbox_id


async def load_task(sessionmaker: Sessions, task_id: uuid.UUID) -> Task:
    async with sessionmaker() as session:
        task = await session.get(Task, task_id)
    assert task is not None
    return task


async def test_status_is_healthy_on_an_idle_system(sessionmaker: Sessions) -> None:
    result, as_json = await asyncio.gather(run("status"), run("status", "--json"))
    assert result.returncode == 0, result.stderr
    assert "healthy" in result.stdout
    report = json.loads(as_json.stdout)
    assert report["healthy"] is True
    assert report["reasons"] == []
    assert report["tasks"] == dict.fromkeys(
        ("pending", "queued", "running", "succeeded", "failed", "cancelled"), 0
    )
    assert report["outbox"] == {"backlog": 0, "oldest_unpublished_age_s": None, "dead": 0}
    assert report["clients"] == []


async def test_status_names_backlog_dead_rows_and_orphans_and_exits_1(
    sessionmaker: Sessions,
) -> None:
    user, _ = await make_user(sessionmaker)
    dead, leased, queued, waiting, deferred = [
        await make_task(sessionmaker, user.id, f"t{index}.example.com") for index in range(5)
    ]
    await kill_message(sessionmaker, dead, "unknown actor")
    await execute(
        sessionmaker,
        "UPDATE tasks SET status = 'running', lease_expires_at = now() - interval '1 s'"
        " WHERE id = :id",
        id=leased,
    )
    await execute(
        sessionmaker,
        "UPDATE tasks SET status = 'queued', queued_at = now() - interval '1 hour' WHERE id = :id",
        id=queued,
    )
    await execute(
        sessionmaker,
        "UPDATE outbox SET created_at = now() - interval '5 minutes',"
        " available_at = now() - interval '5 minutes' WHERE task_id = :id",
        id=waiting,
    )
    # Written an hour ago but not due for ten minutes (a deferral): a backlog, not an age.
    await execute(
        sessionmaker,
        "UPDATE outbox SET created_at = now() - interval '1 hour',"
        " available_at = now() + interval '10 minutes' WHERE task_id = :id",
        id=deferred,
    )

    result, as_json = await asyncio.gather(run("status"), run("status", "--json"))
    assert result.returncode == as_json.returncode == 1
    assert "unhealthy" in result.stdout
    assert "cleanup-orphaned" in result.stdout
    report = json.loads(as_json.stdout)
    assert report["healthy"] is False
    assert len(report["reasons"]) == 4
    assert report["outbox"]["backlog"] == 4
    assert report["outbox"]["dead"] == 1
    assert 300 <= report["outbox"]["oldest_unpublished_age_s"] < 3600
    assert report["orphans"] == {
        "expired_leases": 1,
        "expired_out_of_attempts": 0,
        "unlocated": 1,
        "total": 2,
    }
    assert report["tasks"]["failed"] == 1
    assert report["clients"] == [
        {"client": "alice", "lane": "interactive", "backlog": 4, "in_broker": 1}
    ]
    assert "client alice (interactive)" in result.stdout
    assert "backlog 4  in broker 1" in result.stdout


async def test_status_reports_unreachable_servers_in_its_verdict_not_a_traceback(
    sessionmaker: Sessions,
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    no_redis, no_db = await asyncio.gather(
        run("status", "--json", REDIS_URL=f"redis://{closed}/0"),
        run("status", DATABASE_URL=f"postgresql://user:secret@{closed}/db"),
    )
    assert no_redis.returncode == 1
    report = json.loads(no_redis.stdout)
    assert report["redis"] == {"reachable": False}
    assert report["database"] == {"reachable": True}
    assert report["reasons"] == ["Redis is unreachable"]

    assert no_db.returncode == 1
    assert "the database is unreachable" in no_db.stdout
    assert "secret" not in no_db.stdout + no_db.stderr
    assert "Traceback" not in no_db.stdout + no_db.stderr


async def test_outbox_inspection_and_replay_of_a_dead_row_revives_its_task(
    sessionmaker: Sessions,
) -> None:
    user, _ = await make_user(sessionmaker)
    task_id = await make_task(sessionmaker, user.id, "dead.example.com")
    await make_task(sessionmaker, user.id, "alive.example.com")
    outbox_id = await kill_message(sessionmaker, task_id, "unknown actor 'scan_v0'")
    assert (await load_task(sessionmaker, task_id)).status == "failed"

    listed, shown, readable = await asyncio.gather(
        run_json("outbox", "list", "--state", "dead"),
        run_json("outbox", "show", str(outbox_id)),
        run("outbox", "show", str(outbox_id)),
    )
    assert [row["id"] for row in listed] == [outbox_id]
    assert "payload" not in listed[0]
    assert shown["payload"] == {"task_id": str(task_id)}
    assert shown["last_error"] == "unknown actor 'scan_v0'"
    assert "unknown actor 'scan_v0'" in readable.stdout

    replayed = await run("outbox", "replay", str(outbox_id))
    assert replayed.returncode == 0, replayed.stderr
    assert f"task {task_id} back to pending" in replayed.stdout
    async with sessionmaker() as session:
        row = await session.get(OutboxMessage, outbox_id)
    assert row is not None
    assert (row.dead_at, row.published_at, row.publish_attempts) == (None, None, 0)
    task = await load_task(sessionmaker, task_id)
    assert (task.status, task.error, task.finished_at) == ("pending", None, None)

    again, missing = await asyncio.gather(
        run("outbox", "replay", str(outbox_id)), run("outbox", "show", "999999")
    )
    assert again.returncode == 1
    assert "is unpublished, not dead" in again.stderr
    assert missing.returncode == 1
    assert "no outbox row 999999" in missing.stderr


async def test_replay_all_dead_leaves_tasks_it_did_not_fail(sessionmaker: Sessions) -> None:
    user, _ = await make_user(sessionmaker)
    revived, untouched = [
        await make_task(sessionmaker, user.id, f"r{index}.example.com") for index in range(2)
    ]
    await kill_message(sessionmaker, revived, "broker refused")
    await kill_message(sessionmaker, untouched, "broker refused")
    # Failed again since, for another reason: replaying the old message must not undo that.
    await execute(
        sessionmaker, "UPDATE tasks SET error = 'scan error' WHERE id = :id", id=untouched
    )

    both = await run("outbox", "replay", "7", "--all-dead")
    assert both.returncode == 1
    assert "either one outbox ID or --all-dead" in both.stderr

    rows = await run_json("outbox", "replay", "--all-dead")
    assert {row["task_id"]: row["task_revived"] for row in rows} == {
        str(revived): True,
        str(untouched): False,
    }
    assert (await load_task(sessionmaker, revived)).status == "pending"
    assert (await load_task(sessionmaker, untouched)).status == "failed"


async def test_tasks_list_filters_and_show(sessionmaker: Sessions) -> None:
    alice, _ = await make_user(sessionmaker, "alice")
    bob, _ = await make_user(sessionmaker, "bob")
    first = await make_task(sessionmaker, alice.id, "a.example.com")
    await make_task(sessionmaker, bob.id, "b.example.com")
    await execute(
        sessionmaker,
        "UPDATE tasks SET status = 'succeeded', result = CAST(:result AS jsonb) WHERE id = :id",
        id=first,
        result=json.dumps({"http": {"status": 200, "title": "Shop [new]"}, "findings": []}),
    )

    everything, bobs, shown_json, succeeded, shown, bad = await asyncio.gather(
        run_json("tasks", "list"),
        run_json("tasks", "list", "--user", "bob", "--status", "pending", "--limit", "1"),
        run_json("tasks", "show", str(first)),
        run("tasks", "list", "--status", "succeeded"),
        run("tasks", "show", str(first)),
        run("tasks", "show", "not-a-uuid"),
    )
    assert [t["target_domain"] for t in everything] == ["b.example.com", "a.example.com"]
    assert [t["user"] for t in bobs] == ["bob"]
    assert shown_json["result"]["http"]["status"] == 200
    assert str(first) in succeeded.stdout
    assert "b.example.com" not in succeeded.stdout
    assert shown.returncode == 0
    assert "Shop [new]" in shown.stdout
    assert bad.returncode == 1
    assert "is not a task id" in bad.stderr


async def test_users_list_as_json(sessionmaker: Sessions) -> None:
    _, token = await make_user(sessionmaker, "carol", admin=True)
    users = await run_json("users", "list")
    assert [(u["name"], u["is_admin"], u["revoked_at"]) for u in users] == [("carol", True, None)]
    assert token not in json.dumps(users)


async def test_cleanup_orphaned_removes_stale_markers_and_locks_without_ttl(
    sessionmaker: Sessions, redis_client: redis.Redis
) -> None:
    user, _ = await make_user(sessionmaker)
    live, finished, orphan = [
        await make_task(sessionmaker, user.id, f"m{index}.example.com") for index in range(3)
    ]
    await execute(sessionmaker, "UPDATE tasks SET status = 'succeeded' WHERE id = :id", id=finished)
    await execute(
        sessionmaker,
        "UPDATE tasks SET status = 'running', attempts = 1, lease_expires_at = now()"
        " WHERE id = :id",
        id=orphan,
    )
    for task_id in (live, finished, uuid.uuid4()):
        redis_client.set(keys.task_created_marker(task_id), "1", ex=300)
    redis_client.set("lock:task:stuck", "owner")
    redis_client.set("lock:task:held", "owner", ex=30)

    dry = await run_json("cleanup-orphaned", "--dry-run")
    assert dry["dry_run"] is True
    assert dry["steps"]["orphans"]["lease_expired"] == 1
    assert dry["steps"]["markers"] == {"markers_seen": 3, "markers_removed": 2}
    assert dry["steps"]["locks"] == {"locks_seen": 2, "locks_removed": 1}
    assert redis_client.exists(keys.task_created_marker(finished), "lock:task:stuck") == 2

    done = await run("cleanup-orphaned")
    assert done.returncode == 0, done.stderr
    assert "markers removed 2" in done.stdout
    assert "lease expired 1" in done.stdout
    assert (await load_task(sessionmaker, orphan)).status == "pending"
    async with sessionmaker() as session:
        stmt = select(OutboxMessage.id).where(OutboxMessage.task_id == orphan)
        assert len((await session.execute(stmt)).all()) == 2
    remaining = sorted(key.decode() for key in redis_client.scan_iter("*"))
    assert remaining == sorted([keys.task_created_marker(live), "lock:task:held"])


async def test_cleanup_with_redis_down_is_one_line(sessionmaker: Sessions) -> None:
    result = await run("cleanup-orphaned", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 1
    assert "Redis is unreachable" in result.stderr
    assert "Traceback" not in result.stderr


async def test_full_cleanup_expires_old_idempotency_keys(sessionmaker: Sessions) -> None:
    user, _ = await make_user(sessionmaker)
    old = await make_task(sessionmaker, user.id, "old.example.com", key="old-key")
    recent = await make_task(sessionmaker, user.id, "new.example.com", key="new-key")
    await execute(
        sessionmaker,
        "UPDATE tasks SET created_at = now() - interval '2 days' WHERE id = :id",
        id=old,
    )

    dry = await run_json("full-cleanup", "--dry-run")
    assert dry["steps"]["idempotency"] == {"idempotency_keys_expired": 1}
    assert (await load_task(sessionmaker, old)).idempotency_key == "old-key"

    done = await run_json("full-cleanup")
    assert done["steps"]["idempotency"] == {"idempotency_keys_expired": 1}
    assert (await load_task(sessionmaker, old)).idempotency_key is None
    assert (await load_task(sessionmaker, recent)).idempotency_key == "new-key"


async def test_scan_failures_are_one_line() -> None:
    api_url = f"http://127.0.0.1:{free_port()}"
    no_token, down = await asyncio.gather(
        run("scan", "example.com", "--api-url", api_url, SCAN_TOKEN=""),
        run("scan", "example.com", "--api-url", api_url, SCAN_TOKEN="so_secret"),
    )
    assert no_token.returncode == 1
    assert "an API token is required" in no_token.stderr
    assert down.returncode == 1
    assert f"cannot reach the API at {api_url}" in down.stderr
    assert "so_secret" not in down.stderr + down.stdout
    assert "Traceback" not in down.stderr
