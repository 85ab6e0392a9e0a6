"""`scanctl scan --file FILE`: submit a file of domains in batches, with a progress bar.

Each chunk is one `POST /api/v1/batches` carrying an Idempotency-Key unique to this run, so
a chunk retried after a lost answer is never created twice. Bad lines are reported by line
number and left out; the rest of their chunk is sent again without them. The command
exits 1 if any line was refused or, with --wait, any task did not succeed.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Group
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from scanctl.common import err_console, fail

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# Long enough that one request covers most of a batch's run; the server caps it.
WAIT_PER_REQUEST_S = 30
# Never ask again sooner than this, whatever the server answers (an API without `wait`).
MIN_POLL_INTERVAL_S = 1.0
RATE_LIMIT_RETRIES = 20


@dataclass
class Line:
    number: int
    domain: str


@dataclass
class Outcome:
    batch_ids: list[str] = field(default_factory=list)
    task_total: int = 0
    refused: list[tuple[Line, str]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    not_succeeded: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused and not self.not_succeeded

    def as_json(self) -> dict[str, Any]:
        return {
            "batches": self.batch_ids,
            "counts": dict(self.counts),
            "refused": [
                {"line": line.number, "domain": line.domain, "reason": reason}
                for line, reason in self.refused
            ],
            "not_succeeded": [
                {"domain": domain, "status": status, "error": error}
                for domain, status, error in self.not_succeeded
            ],
        }


def read_lines(path: Path) -> list[Line]:
    """Domains one per line; blank lines and `#` comments skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path} ({type(exc).__name__})")
    lines = [
        Line(number, raw.split("#", 1)[0].strip())
        for number, raw in enumerate(text.splitlines(), start=1)
    ]
    return [line for line in lines if line.domain]


def _error_of(response: httpx.Response) -> dict[str, Any]:
    try:
        error: dict[str, Any] = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return {"code": "http_error", "message": response.reason_phrase}
    return error


class Submitter:
    """Sends chunks as batches, following rate limits and dropping refused lines."""

    def __init__(self, client: httpx.Client, config: dict[str, Any], outcome: Outcome) -> None:
        self.client = client
        self.config = config
        self.outcome = outcome
        self.run_id = uuid.uuid4().hex

    def _post(self, chunk: list[Line], key: str) -> httpx.Response:
        body = {"tasks": [{"target_domain": line.domain} for line in chunk], "config": self.config}
        for _ in range(RATE_LIMIT_RETRIES):
            try:
                response = self.client.post(
                    "/api/v1/batches", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.HTTPError as exc:
                fail(f"cannot reach the API ({type(exc).__name__})")
            if response.status_code != 429:
                return response
            retry_after_s = int(response.headers.get("retry-after", "1"))
            err_console.print(f"rate limited: waiting {retry_after_s}s", highlight=False)
            time.sleep(retry_after_s)
        fail("still rate limited after many waits; try a smaller --batch-size")

    def submit(self, chunk: list[Line], index: int) -> None:
        """One chunk as one batch; its refused lines recorded and the rest sent again."""
        key = f"scanctl-{self.run_id}-{index}"
        while chunk:
            response = self._post(chunk, key)
            if response.status_code in (200, 201):
                self.outcome.batch_ids.append(response.json()["id"])
                self.outcome.task_total += response.json()["task_count"]
                return
            error = _error_of(response)
            entries = error.get("errors") or []
            if response.status_code != 422 or not entries:
                where = f" [{error['field']}]" if error.get("field") else ""
                fail(f"the API answered {response.status_code}: {error.get('message')}{where}")
            bad = {entry["index"]: entry["reason"] for entry in entries}
            self.outcome.refused += [(chunk[i], reason) for i, reason in sorted(bad.items())]
            chunk = [line for i, line in enumerate(chunk) if i not in bad]
            key = f"{key}-r"


def _poll(client: httpx.Client, batch_id: str, cursor: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": 1000}
    if cursor is None:
        params["wait"] = WAIT_PER_REQUEST_S
    else:
        params["cursor"] = cursor
    response = client.get(
        f"/api/v1/batches/{batch_id}", params=params, timeout=WAIT_PER_REQUEST_S + 10
    )
    if response.status_code >= 400:
        error = _error_of(response)
        fail(f"the API answered {response.status_code}: {error.get('message')}")
    body: dict[str, Any] = response.json()
    return body


def _collect(client: httpx.Client, batch: dict[str, Any], outcome: Outcome) -> None:
    """Every task of a finished batch that did not succeed, page by page."""
    outcome.counts.update(batch["counts"])
    while True:
        for task in batch["tasks"]:
            if task["status"] != "succeeded":
                outcome.not_succeeded.append(
                    (task["target_domain"], task["status"], task["error"] or "")
                )
        if not batch["next_cursor"]:
            return
        batch = _poll(client, batch["id"], batch["next_cursor"])


def wait_for(
    client: httpx.Client, outcome: Outcome, progress: Progress, bar: TaskID, timeout_s: float
) -> None:
    """Follow each batch until all its tasks ended, advancing the bar as they do."""
    deadline = time.monotonic() + timeout_s
    finished_before = 0
    for batch_id in outcome.batch_ids:
        while True:
            asked = time.monotonic()
            batch = _poll(client, batch_id)
            ended = sum(n for status, n in batch["counts"].items() if status in TERMINAL)
            progress.update(bar, completed=finished_before + ended)
            if batch["done"]:
                finished_before += batch["task_count"]
                _collect(client, batch, outcome)
                break
            if time.monotonic() > deadline:
                fail(f"gave up after {timeout_s:g}s; batch {batch_id} is still running")
            time.sleep(max(0.0, MIN_POLL_INTERVAL_S - (time.monotonic() - asked)))


def run(
    client: httpx.Client,
    lines: list[Line],
    config: dict[str, Any],
    *,
    batch_size: int,
    wait: bool,
    timeout_s: float,
) -> Outcome:
    outcome = Outcome()
    submitter = Submitter(client, config, outcome)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err_console) as progress:
        sent = progress.add_task("submitted", total=len(lines))
        for index, start in enumerate(range(0, len(lines), batch_size)):
            chunk = lines[start : start + batch_size]
            submitter.submit(chunk, index)
            progress.advance(sent, len(chunk))
        if wait:
            done = progress.add_task("finished", total=outcome.task_total)
            wait_for(client, outcome, progress, done, timeout_s)
    return outcome


def summary(outcome: Outcome, waited: bool) -> Group:
    """Batches sent, tasks by status (after --wait), and every line or task that failed."""
    parts: list[Any] = [f"{len(outcome.batch_ids)} batch(es), {outcome.task_total} task(s)"]
    if waited:
        parts.append(", ".join(f"{n} {status}" for status, n in sorted(outcome.counts.items())))
    if outcome.refused:
        refused = Table("line", "domain", "refused because", title="refused lines")
        for line, reason in outcome.refused:
            refused.add_row(str(line.number), escape(line.domain), escape(reason))
        parts.append(refused)
    if outcome.not_succeeded:
        failed = Table("domain", "status", "error", title="tasks that did not succeed")
        for domain, status, error in outcome.not_succeeded:
            failed.add_row(escape(domain), status, escape(error))
        parts.append(failed)
    return Group(*parts)
