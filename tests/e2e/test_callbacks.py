"""Completion callbacks end to end: the worker ends the task, the trigger writes the
delivery, the relay process POSTs it, signed, to a real local receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.embedded import EmbeddedUrls
from tests.e2e.stack import Stack, new_stack
from tests.helpers import scanctl, wait_until
from tests.receivers import documented_verify, receiving
from tests.sites import Site

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]


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
    verify = documented_verify()
    for got in by_path.values():
        assert verify(secret, got.headers, got.body)
    task_event = json.loads(by_path["/cb"].body)
    batch_event = json.loads(by_path["/batch"].body)
    assert (task_event["task"]["id"], task_event["task"]["status"]) == (task["id"], "succeeded")
    assert batch_event["batch"]["id"] == batch["id"]
    assert batch_event["batch"]["counts"] == {"succeeded": 3}
