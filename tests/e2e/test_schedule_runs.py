"""A schedule on the real stack (API, relay, worker): made and read with `scanctl schedules`,
its runs are batches the worker scans, followed with `wait`, and compared run to run."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Schedule
from shared.settings import Settings
from tests.e2e.relays import Db
from tests.e2e.stack import Stack
from tests.helpers import scanctl, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]
DEADLINE_S = 60.0


@pytest.fixture
def db(settings: Settings) -> Iterator[Db]:
    database = Db(settings)
    yield database
    database.close()


def due_now(db: Db, schedule_id: str) -> None:
    """Bring the next tick forward to now (an hourly schedule, without waiting an hour)."""

    async def move(sm: async_sessionmaker[AsyncSession]) -> None:
        async with sm() as session, session.begin():
            stmt = (
                update(Schedule)
                .where(Schedule.id == uuid.UUID(schedule_id))
                .values(next_fire_at=datetime.now(UTC).replace(microsecond=0))
            )
            await session.execute(stmt)

    db(move)


def test_a_schedule_made_with_scanctl_runs_batches_the_worker_scans_and_compares_them(
    stack: Stack, db: Db
) -> None:
    created = scanctl("users", "create", "watcher", env=stack.env)
    assert created.returncode == 0, created.stderr
    env = {**stack.env, "SCAN_TOKEN": created.stdout.strip()}
    api = ["--api-url", stack.api_url]
    made = scanctl(
        "schedules",
        "create",
        "--interval",
        "3600",
        "--domain",
        "w1.example.com",
        "--domain",
        "w2.example.com",
        "--keyword",
        "welcome",
        "--json",
        *api,
        env=env,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    schedule = json.loads(made.stdout)
    refused = scanctl(
        "schedules", "create", "--interval", "5", "--domain", "x.example.com", *api, env=env
    )
    assert refused.returncode == 1
    assert "[interval_s]" in refused.stdout + refused.stderr

    headers = {"Authorization": f"Bearer {env['SCAN_TOKEN']}"}
    runs_path = f"{stack.api_url}/api/v1/schedules/{schedule['id']}/runs"
    for expected_runs in (1, 2):
        due_now(db, schedule["id"])

        def fired(n: int = expected_runs) -> list[dict[str, object]] | None:
            items = httpx.get(runs_path, headers=headers, timeout=5).json()["items"]
            return items if len(items) == n else None

        latest = wait_until(fired, DEADLINE_S, f"run {expected_runs}", every_s=0.2)[0]
        batch = httpx.get(
            f"{stack.api_url}/api/v1/batches/{latest['batch_id']}",
            params={"wait": 30},
            headers=headers,
            timeout=40,
        ).json()
        assert batch["counts"] == {"succeeded": 2}, batch

    def reported() -> list[dict[str, object]] | None:
        items = httpx.get(runs_path, headers=headers, timeout=5).json()["items"]
        return items if all(item["changes"] is not None for item in items) else None

    second, first = wait_until(reported, DEADLINE_S, "both runs compared", every_s=0.2)
    # The same site twice: nothing changed, and the first run had nothing to compare with.
    assert (first["changes"], second["changes"]) == ([], [])

    listed = scanctl("schedules", "list", "--json", *api, env=env)
    assert [row["id"] for row in json.loads(listed.stdout)] == [schedule["id"]]
    # A table as wide as an operator's terminal: a pipe's default width would cut the ids.
    runs = scanctl("schedules", "runs", schedule["id"], *api, env={**env, "COLUMNS": "200"})
    assert runs.returncode == 0
    assert str(second["batch_id"]) in runs.stdout
    paused = scanctl("schedules", "pause", schedule["id"], "--json", *api, env=env)
    assert json.loads(paused.stdout)["paused"] is True
    gone = scanctl("schedules", "delete", schedule["id"], *api, env=env)
    assert gone.returncode == 0
    missing = scanctl("schedules", "show", schedule["id"], *api, env=env)
    assert missing.returncode == 1
