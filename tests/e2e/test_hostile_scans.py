"""End to end: a regex bomb and hostile pages beside innocent scans, with the three real
processes. Every task ends with its report in one run; none is failed or charged again."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.stack import Stack
from tests.helpers import wait_until
from tests.sites import Page, Site, pages_by_host

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]
INNOCENT = 20
DEADLINE_S = 90.0
TERMINAL = ("succeeded", "failed", "cancelled")
BOMB = r"(x+x+)+y"
RULES = {"keywords": ["welcome"], "regexes": [r"w\w+e", r"t(i)tle"]}
HOSTILE_PAGES = {
    "bomb": Page(b"x" * 200_000),
    "nul": Page(b"<title>bad\x00title</title><body>welcome\x00 home</body>"),
    "base64": Page(b"<title>Encoded</title>welcome", "text/html; charset=base64"),
    "rot13": Page(b'<meta charset="rot13"><title>Rotated</title>welcome', "text/html"),
    "utf7": Page(b"<title>lone +2AA- surrogate</title>welcome", "text/html; charset=utf-7"),
    "binary": Page(os.urandom(50_000) + b"\x00welcome\x00", "application/octet-stream"),
    "headers": Page(b"<title>big</title>", headers={"X-Padding": "p" * 300_000}),
}


@pytest.fixture
def site() -> Iterator[Site]:
    with pages_by_host(HOSTILE_PAGES) as site:
        yield site


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    created = subprocess.run(
        [sys.executable, "-m", "scanctl.main", "users", "create", "e2e"],
        env=stack.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as http:
        yield http


def submit(http: httpx.Client, domain: str, config: dict[str, Any]) -> str:
    response = http.post("/api/v1/tasks", json={"target_domain": domain, "config": config})
    assert response.status_code == 201, response.text
    task_id: str = response.json()["id"]
    return task_id


def all_ended(http: httpx.Client, ids: dict[str, str]) -> dict[str, dict[str, Any]] | None:
    tasks = {name: http.get(f"/api/v1/tasks/{task_id}").json() for name, task_id in ids.items()}
    return tasks if all(task["status"] in TERMINAL for task in tasks.values()) else None


def test_a_regex_bomb_runs_in_linear_time_beside_innocent_scans(
    stack: Stack, client: httpx.Client
) -> None:
    ids = {"bomb": submit(client, "bomb.example.com", {"regexes": [BOMB, r"(a|aa)*b"]})}
    for index in range(INNOCENT):
        ids[f"site{index}"] = submit(client, f"site{index}.example.com", RULES)
        if index == INNOCENT // 2:
            ids["bomb2"] = submit(client, "bomb.example.com", {"regexes": [BOMB]})
    for name in HOSTILE_PAGES.keys() - {"bomb"}:
        ids[name] = submit(client, f"{name}.example.com", RULES)

    tasks = wait_until(lambda: all_ended(client, ids), DEADLINE_S, "every scan to end", 0.2)

    # One run each: a stalled event loop would have lost leases and run scans again.
    ended = {name: (task["status"], task["attempts"]) for name, task in tasks.items()}
    assert ended == dict.fromkeys(ids, ("succeeded", 1)), stack.services["worker"].log()[-3000:]
    assert all(task["redispatches"] == 0 for task in tasks.values())
    for index in range(INNOCENT):
        report = tasks[f"site{index}"]["result"]
        assert report["http"]["title"] == f"site{index}.example.com"
        assert [finding["rule"] for finding in report["findings"]] == ["keyword", "regex", "regex"]
    for bomb in ("bomb", "bomb2"):
        report = tasks[bomb]["result"]
        assert report["http"]["body_bytes"] == 200_000
        assert report["findings"] == []
    reports = {name: tasks[name]["result"] for name in HOSTILE_PAGES}
    assert reports["nul"]["http"]["title"] == "bad\ufffdtitle"
    assert reports["base64"]["http"]["title"] == "Encoded"
    assert reports["rot13"]["http"]["title"] == "Rotated"
    assert reports["utf7"]["http"]["title"] == "lone \ufffd surrogate"
    assert reports["binary"]["findings"][0]["rule"] == "keyword"
    assert reports["headers"]["http"]["error"] == "protocol error: Receive buffer too long"
