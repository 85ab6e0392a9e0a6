"""Batches on the real stack: `scanctl scan --file`, and waiting for the worker's results."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.e2e.stack import Stack
from tests.helpers import scanctl

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]


def token(stack: Stack) -> str:
    created = scanctl("users", "create", "batcher", env=stack.env)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def test_a_file_is_scanned_in_batches_and_waited_for(stack: Stack, tmp_path: Path) -> None:
    domains = tmp_path / "domains.txt"
    domains.write_text(
        "# nightly\n"
        + "".join(f"f{n}.example.com\n" for n in range(5))
        + "\nF0.example.com  # a duplicate\n"
    )
    env = {**stack.env, "SCAN_TOKEN": token(stack)}

    done = scanctl(
        "scan",
        "--file",
        str(domains),
        "--batch-size",
        "2",
        "--wait",
        "--json",
        "--api-url",
        stack.api_url,
        env=env,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    outcome = json.loads(done.stdout)
    # Six lines in chunks of two: three batches, the duplicate one task in its own batch.
    assert len(outcome["batches"]) == 3
    assert outcome["counts"] == {"succeeded": 6}
    assert (outcome["refused"], outcome["not_succeeded"]) == ([], [])


def test_refused_lines_are_named_the_rest_is_sent_and_the_exit_code_is_1(
    stack: Stack, tmp_path: Path
) -> None:
    domains = tmp_path / "domains.txt"
    domains.write_text(
        "good1.example.com\nhttps://bad.example.com/\ngood2.example.com\nlocalhost\n"
    )
    env = {**stack.env, "SCAN_TOKEN": token(stack)}

    result = scanctl("scan", "--file", str(domains), "--wait", "--api-url", stack.api_url, env=env)

    assert result.returncode == 1
    assert "2 line(s) refused, 0 task(s) did not succeed" in result.stderr
    assert "Traceback" not in result.stderr
    assert "2 succeeded" in result.stdout
    # Line numbers of the file, not positions in a batch.
    assert re.search(r"\b2\s*│\s*https://bad\.example\.com/", result.stdout), result.stdout
    assert re.search(r"\b4\s*│\s*localhost", result.stdout), result.stdout


def test_reads_with_wait_answer_when_the_worker_has_finished(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {token(stack)}"}
    body = {"tasks": [{"target_domain": f"w{n}.example.com"} for n in range(3)]}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=40) as http:
        batch = http.post("/api/v1/batches", json=body).json()
        task = http.post("/api/v1/tasks", json={"target_domain": "single.example.com"}).json()

        waited_batch = http.get(f"/api/v1/batches/{batch['id']}", params={"wait": 30}).json()
        waited_task = http.get(f"/api/v1/tasks/{task['id']}", params={"wait": 30}).json()

    assert (waited_batch["done"], waited_batch["counts"]) == (True, {"succeeded": 3})
    assert [t["status"] for t in waited_batch["tasks"]] == ["succeeded"] * 3
    assert waited_task["status"] == "succeeded"
    assert waited_task["result"]["http"]["title"] == "single.example.com"
