"""One way to start the worker: the documented command runs it, Dramatiq's own refuses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.embedded import EmbeddedUrls
from tests.e2e.stack import Stack, new_stack
from tests.helpers import wait_until
from worker_service.async_worker import REFUSED_EXIT, START_COMMAND

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]

DEADLINE_S = 30.0
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def stack(servers: EmbeddedUrls, tmp_path: Path) -> Iterator[Stack]:
    stack = new_stack(servers.database_url, servers.redis_url, site_port=9, log_dir=tmp_path)
    # As in a deployment that sets nothing: the worker makes (and removes) its metrics folder.
    stack.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        yield stack
    finally:
        stack.stop_all()


def ready(stack: Stack) -> bool:
    url = f"http://127.0.0.1:{stack.env['SCAN_WORKER_METRICS_PORT']}/readyz"
    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_documented_command_starts_a_ready_worker_that_stops_cleanly(stack: Stack) -> None:
    # The command the docs give, word for word, and nothing more.
    assert f"Workers run `{START_COMMAND}`" in (DOCS / "operations.md").read_text()
    program, module = START_COMMAND.removeprefix("python ").split(" ")
    worker = stack.start("worker", [sys.executable, program, module])

    wait_until(lambda: ready(stack), DEADLINE_S, "the worker's /readyz to answer 200")

    assert worker.stop() == 0, worker.log()[-3000:]


def test_plain_dramatiq_refuses_to_run_the_worker_and_names_the_command(
    stack: Stack,
) -> None:
    dramatiq = Path(sys.executable).parent / "dramatiq"
    refused = subprocess.run(
        [str(dramatiq), "worker_service.actors", "--processes", "1", "--threads", "1"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )

    assert refused.returncode == REFUSED_EXIT, refused.stderr[-3000:]
    assert f"start the worker with `{START_COMMAND}`" in refused.stderr
    # Refused before it booted: no worker ever announced itself ready.
    assert "ready for action" not in refused.stderr
