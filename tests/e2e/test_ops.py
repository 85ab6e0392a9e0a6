"""End to end, as an operator sees it: JSON logs joined by one request id, metrics, scanctl."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.stack import Stack
from tests.helpers import scanctl, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]


def new_token(stack: Stack, name: str, *flags: str) -> str:
    created = scanctl("users", "create", name, *flags, env=stack.env)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def log_lines(stack: Stack, service: str) -> list[dict[str, Any]]:
    """Every line the service wrote, each of which must be one JSON object."""
    lines = []
    for line in stack.services[service].log().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"{service} wrote a line that is not JSON: {line!r}") from None
    return lines


def lines_with(stack: Stack, service: str, request_id: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(stack, service) if line.get("request_id") == request_id]


def test_one_request_id_follows_a_scan_from_the_api_log_to_the_worker_log(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {new_token(stack, 'e2e')}", "X-Request-ID": "trace-7"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as http:
        created = http.post("/api/v1/tasks", json={"target_domain": "traced.example.com"})
        assert created.status_code == 201, created.text
        assert created.headers["x-request-id"] == "trace-7"
        task_id = created.json()["id"]
        wait_until(
            lambda: http.get(f"/api/v1/tasks/{task_id}").json()["status"] == "succeeded",
            30,
            "the scan to succeed",
        )
        api_metrics = http.get("/metrics").text
    # The worker logs the end of a scan just after committing it.
    wait_until(
        lambda: any(
            line["event"] == "task_finished" for line in lines_with(stack, "worker", "trace-7")
        ),
        10,
        "the worker to log the end of the scan",
    )
    worker_port = stack.env["SCAN_WORKER_METRICS_PORT"]
    worker_metrics = httpx.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=5).text
    stack.assert_stopped_cleanly(stack.stop_all())

    api_lines = lines_with(stack, "api", "trace-7")
    assert any(line.get("task_id") == task_id for line in api_lines)
    worker_lines = lines_with(stack, "worker", "trace-7")
    # One line per task at INFO (the HTTP clients' per-request lines are off).
    assert [line["event"] for line in worker_lines] == ["task_finished"]
    assert all(line["task_id"] == task_id and line["message_id"] for line in worker_lines)
    # Not one plain-text line anywhere: uvicorn's, Dramatiq's main process, the relay.
    assert any(line["logger"].startswith("uvicorn") for line in log_lines(stack, "api"))
    assert any(line["logger"] == "dramatiq.MainProcess" for line in log_lines(stack, "worker"))
    assert log_lines(stack, "relay")

    assert 'route="/api/v1/tasks/{task_id}"' in api_metrics
    assert "scan_outbox_tasks_created_total 1.0" in api_metrics
    assert 'scan_outbox_tasks_finished_total{outcome="succeeded"} 1.0' in worker_metrics
    assert "scan_outbox_scan_duration_seconds_count 1.0" in worker_metrics
    assert "scan_outbox_outbox_backlog" not in worker_metrics


def test_scanctl_scan_waits_for_the_report_and_status_is_healthy(stack: Stack) -> None:
    env = {**stack.env, "SCAN_TOKEN": new_token(stack, "ops", "--admin")}
    api = ("--api-url", stack.api_url)

    shown = scanctl("scan", "shop.example.com", "--wait", "--keyword", "welcome", *api, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "succeeded" in shown.stdout
    assert "shop.example.com" in shown.stdout
    assert "request id" in shown.stderr
    raw = scanctl("scan", "raw.example.com", "--wait", "--json", *api, env=env)
    assert raw.returncode == 0, raw.stderr
    task = json.loads(raw.stdout)
    assert task["status"] == "succeeded"
    assert task["result"]["http"]["title"] == "raw.example.com"

    refused = scanctl("scan", "x.example.com", *api, env={**env, "SCAN_TOKEN": "so_wrong"})
    assert refused.returncode == 1
    assert "refused the token (401" in refused.stderr
    assert "so_wrong" not in refused.stderr

    status = scanctl("status", "--json", env=env)
    assert status.returncode == 0, status.stdout
    assert json.loads(status.stdout)["tasks"]["succeeded"] == 2
    health = httpx.get(
        f"{stack.api_url}/api/v1/ops/health",
        headers={"Authorization": f"Bearer {env['SCAN_TOKEN']}"},
        timeout=10,
    )
    assert health.status_code == 200, health.text
