"""End to end behind a real PgBouncer in transaction mode: the services' pooled connections go
through it, their sessions (LISTEN, the leader's lock) to the direct URL, or nowhere."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scanctl.processes import api_command, relay_command, worker_command
from shared.embedded import EmbeddedUrls
from tests.e2e.stack import Stack, new_stack
from tests.e2e.test_pipeline import all_finished, submit
from tests.helpers import wait_until
from tests.pgbouncer import PgBouncer, pooled_env
from tests.sites import Site

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]
SCANS = 30
# Refused by PgBouncer at connection start: a service that still sent it could not connect.
STARTUP_REFUSAL = "unsupported startup parameter"


def pooled_stack(
    servers: EmbeddedUrls, pooler: PgBouncer, site: Site, log_dir: Path, *, direct: bool
) -> Stack:
    stack = new_stack(servers.database_url, servers.redis_url, site.port, log_dir)
    stack.env.update(pooled_env(pooler, servers.database_url if direct else None))
    return stack


def token_for(stack: Stack) -> str:
    created = subprocess.run(
        [sys.executable, "-m", "scanctl.main", "users", "create", "pooled"],
        env=stack.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return created.stdout.strip()


@pytest.fixture
def logins_at_start(pooler: PgBouncer) -> int:
    """Client logins PgBouncer had accepted before the stack started."""
    return pooler.logins()


@pytest.fixture
def stack(
    servers: EmbeddedUrls, pooler: PgBouncer, site: Site, tmp_path: Path, logins_at_start: int
) -> Iterator[Stack]:
    stack = pooled_stack(servers, pooler, site, tmp_path, direct=True)
    stack.start_all()
    try:
        yield stack
    finally:
        stack.assert_stopped_cleanly(stack.stop_all())


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {token_for(stack)}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as http:
        yield http


def test_scans_created_through_pgbouncer_all_succeed_once(
    stack: Stack, pooler: PgBouncer, site: Site, client: httpx.Client, logins_at_start: int
) -> None:
    ids = submit(client, [f"pooled{index}.example.com" for index in range(SCANS)])
    tasks = wait_until(lambda: all_finished(client, ids), 60, "all scans to finish", every_s=0.2)

    assert [task["status"] for task in tasks] == ["succeeded"] * SCANS
    assert [task["attempts"] for task in tasks] == [1] * SCANS
    assert site.total_hits == SCANS
    # The services' pooled connections logged in through PgBouncer.
    assert pooler.logins() > logins_at_start
    for service in stack.services.values():
        assert STARTUP_REFUSAL not in service.log()
        assert "relay_listen_lost" not in service.log()


def test_a_wait_through_pgbouncer_ends_on_the_workers_hint(
    stack: Stack, client: httpx.Client
) -> None:
    (task_id,) = submit(client, ["waited.example.com"])
    answer = client.get(f"/api/v1/tasks/{task_id}", params={"wait": 20})

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded"
    # Woken through Redis: nothing about waiting needs a server session.
    assert '"wakeup_hints_subscribed"' in stack.services["api"].log()


def test_a_relay_restarted_behind_pgbouncer_takes_the_lead_and_publishes_again(
    stack: Stack, client: httpx.Client
) -> None:
    stack.services["relay"].stop()
    ids = submit(client, [f"restart{index}.example.com" for index in range(5)])
    relay = stack.start("relay", relay_command())

    tasks = wait_until(lambda: all_finished(client, ids), 60, "the backlog to run", every_s=0.2)
    assert [task["status"] for task in tasks] == ["succeeded"] * 5
    wait_until(lambda: "relay_leader_gained" in relay.log(), 30, "the new relay to lead")


def test_without_a_direct_url_the_api_serves_waits_and_the_relay_refuses_to_start(
    servers: EmbeddedUrls, pooler: PgBouncer, site: Site, tmp_path: Path
) -> None:
    stack = pooled_stack(servers, pooler, site, tmp_path, direct=False)
    refused = subprocess.run(
        relay_command(), env=stack.env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "DATABASE_DIRECT_URL" in refused.stderr

    stack.start("api", api_command("127.0.0.1", stack.api_port))
    stack.start("worker", worker_command(processes=1))
    # Only the relay gets a session URL: it is the one part that cannot do without.
    stack.env["DATABASE_DIRECT_URL"] = servers.database_url
    stack.start("relay", relay_command())
    try:
        wait_until(stack._api_ready, 30, "the API to be ready")
        headers = {"Authorization": f"Bearer {token_for(stack)}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as http:
            (task_id,) = submit(http, ["polled.example.com"])
            answer = http.get(f"/api/v1/tasks/{task_id}", params={"wait": 20})
        assert answer.json()["status"] == "succeeded", answer.text
        assert '"wakeup_hints_subscribed"' in stack.services["api"].log()
    finally:
        stack.assert_stopped_cleanly(stack.stop_all())
