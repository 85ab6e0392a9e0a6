"""Completion callbacks end to end: the worker ends the task, the trigger writes the
delivery, the relay process POSTs it, signed, to a real local receiver; a relay killed
mid-POST leaves it to another, which sends it again with the same delivery id."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import callbacks, tasks
from shared.embedded import EmbeddedUrls
from shared.messages import scan_entry
from shared.settings import Settings
from shared.signing import ID_HEADER, LEGACY_DELIVERY_ID_HEADER
from tests.callbacks import end_tasks, make_due
from tests.e2e.relays import Db, fleet
from tests.e2e.stack import Stack, new_stack
from tests.helpers import make_user, scanctl, wait_until
from tests.receivers import receiving, verifies
from tests.sites import Site

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]
DEADLINE_S = 60.0
# Standard base64 of 32 bytes, as the API issues them.
SECRET = "whsec_" + base64.b64encode(b"e2e: a relay killed mid-POST ...").decode()
# Longer than any wait below, so the first relay is still inside its POST when killed.
HELD_POST_TIMEOUT_S = 120


@pytest.fixture
def db(settings: Settings) -> Iterator[Db]:
    database = Db(settings)
    yield database
    database.close()


@pytest.fixture
def stack(servers: EmbeddedUrls, site: Site, tmp_path: Path, clean_state: None) -> Iterator[Stack]:
    stack = new_stack(servers.database_url, servers.redis_url, site.port, tmp_path)
    stack.env["SCAN_CALLBACK_ALLOW_HTTP"] = "true"
    stack.start_all()
    try:
        yield stack
    finally:
        stack.assert_stopped_cleanly(stack.stop_all())


def test_the_relay_delivers_signed_callbacks_for_a_task_and_a_batch(stack: Stack) -> None:
    created = scanctl("users", "create", "hooked", env=stack.env)
    assert created.returncode == 0, created.stderr
    headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
    with (
        receiving() as receiver,
        httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as http,
    ):
        secret = http.post("/api/v1/callbacks/secret").json()["secret"]
        task = http.post(
            "/api/v1/tasks",
            json={"target_domain": "hooked.example.com", "callback_url": receiver.url()},
        ).json()
        batch = http.post(
            "/api/v1/batches",
            json={
                "tasks": [{"target_domain": f"hb{n}.example.com"} for n in range(3)],
                "callback_url": receiver.url(path="/batch"),
            },
        ).json()
        wait_until(lambda: len(receiver.received) >= 2, 60, "two callbacks")

    by_path = {got.path: got for got in receiver.received}
    assert set(by_path) == {"/cb", "/batch"}
    for got in by_path.values():
        assert verifies(secret, got)
    task_event = json.loads(by_path["/cb"].body)
    batch_event = json.loads(by_path["/batch"].body)
    assert (task_event["task"]["id"], task_event["task"]["status"]) == (task["id"], "succeeded")
    assert batch_event["batch"]["id"] == batch["id"]
    assert batch_event["batch"]["counts"] == {"succeeded": 3}


async def ended_task_with_callback(
    sessionmaker: async_sessionmaker[AsyncSession], url: str
) -> None:
    """A user with a signing secret and a task of theirs calling `url`, ended: its end
    writes the delivery (and notifies the relays) as the worker's would."""
    user, _ = await make_user(sessionmaker, "hooked")
    task_id = uuid.uuid4()
    new = tasks.NewTask(user.id, "killed.example.com", {}, 1, callback_url=url)
    async with sessionmaker() as session, session.begin():
        await callbacks.rotate_secret(session, user.id, SECRET, keep_previous=False)
        entry = scan_entry(task_id, "scans")
        await tasks.insert_task_with_message(session, task_id, new, entry)
    await end_tasks(sessionmaker)


async def delivery_state(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, object]:
    """The only delivery, with whether its lease outlasts a held POST's timeout."""
    async with sessionmaker() as session:
        row = (
            await session.execute(
                text(
                    "SELECT delivery_id, attempts, delivered_at, dead_at, last_status,"
                    " last_error, available_at > now() + make_interval(secs => :held_s)"
                    " AS leased FROM deliveries"
                ),
                {"held_s": HELD_POST_TIMEOUT_S},
            )
        ).one()
    return dict(row._mapping)


def test_a_relay_killed_mid_post_leaves_the_callback_to_another_with_the_same_delivery_id(
    servers: EmbeddedUrls, site: Site, tmp_path: Path, db: Db
) -> None:
    with (
        receiving() as receiver,
        fleet(servers.database_url, servers.redis_url, site.port, tmp_path) as group,
    ):
        receiver.gate = threading.Event()
        db(lambda sm: ended_task_with_callback(sm, receiver.url()))
        callback_env = {
            "SCAN_CALLBACK_ALLOW_HTTP": "true",
            "SCAN_CALLBACK_TIMEOUT_S": str(HELD_POST_TIMEOUT_S),
        }
        first = group.relay("relay-first", **callback_env)
        wait_until(lambda: receiver.arrived == 1, DEADLINE_S, "the first relay's POST")

        group.kill(first.service)
        leased = db(delivery_state)
        assert leased["attempts"] == 1
        assert leased["leased"], "the claim leased the row past the POST's timeout"
        assert (leased["delivered_at"], leased["dead_at"], leased["last_error"]) == (
            None,
            None,
            None,
        ), "the relay died inside its POST, before any outcome was recorded"

        # The held POST ends now, its sender gone; waiting out the lease would take the
        # POST timeout plus the margin, so the lease runs out here instead.
        receiver.gate.set()
        db(make_due)
        second = group.relay("relay-second", **callback_env)
        wait_until(
            lambda: db(delivery_state)["delivered_at"] is not None,
            DEADLINE_S,
            "the second relay to deliver",
        )
        wait_until(lambda: len(receiver.received) == 2, DEADLINE_S, "both POSTs recorded")
        assert second.metric("scan_outbox_callbacks_delivered_total") == 1

    delivered = db(delivery_state)
    assert (delivered["attempts"], delivered["last_status"]) == (2, 200)
    assert receiver.arrived == 2
    for got in receiver.received:
        assert got.path == "/cb"
        assert got.headers[ID_HEADER] == str(delivered["delivery_id"])
        assert got.headers[LEGACY_DELIVERY_ID_HEADER] == str(delivered["delivery_id"])
        assert json.loads(got.body)["id"] == str(delivered["delivery_id"])
        assert verifies(SECRET, got)
