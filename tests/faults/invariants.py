"""The promise, checked after every fault: each accepted scan reached an end exactly once in
effect, and nothing ran, or was sent, for a task that was never committed.

`check` takes what the clients were told, what the site served, the workers' logs and the
broker's contents, compares them with the database and the audit of result writes, and returns
the counts it verified (also collected for the end-of-run summary).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.e2e.relays import Db
from tests.faults.client import CreateOutcome
from tests.faults.harness import FaultStack
from tests.faults.site import CountingSite
from tests.helpers import wait_until

TERMINAL = ("succeeded", "failed", "cancelled")
# What a worker logs when a message names a task it cannot find; by design it never happens.
MISSING_TASK_EVENTS = frozenset({"task_not_found", "task_not_visible_yet", "message_rejected"})
REPORTS: list[InvariantReport] = []
MEMORY_TABLES: list[str] = []
# One line per recovery a test timed: the fault, what ended, how long after it.
RECOVERY_TIMES: list[str] = []


@dataclass(frozen=True)
class TaskFact:
    id: uuid.UUID
    domain: str
    status: str
    attempts: int
    title: str | None


@dataclass(frozen=True)
class AuditRow:
    task_id: uuid.UUID
    new_status: str
    result_written: bool
    writer: str | None


@dataclass
class InvariantReport:
    """The counts one scenario's check verified."""

    scenario: str
    creates: int = 0
    accepted: int = 0
    refused: int = 0
    not_sent: int = 0
    unknown_replayed: int = 0
    tasks: int = 0
    succeeded: int = 0
    terminal_writes: int = 0
    result_writes: int = 0
    rerun_tasks: int = 0
    site_fetches: int = 0
    outbox_rows: int = 0
    broker_messages: int = 0
    worker_task_ids: int = 0
    runs_finished: int = 0
    duplicates_skipped: int = 0

    def line(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in asdict(self).items() if k != "scenario")
        return f"{self.scenario}: {counts}"


async def _tasks(sessionmaker: async_sessionmaker[AsyncSession]) -> list[TaskFact]:
    sql = text("SELECT id, target_domain, status, attempts, result->'http'->>'title' FROM tasks")
    async with sessionmaker() as session:
        return [TaskFact(*row) for row in (await session.execute(sql)).all()]


async def _audit(sessionmaker: async_sessionmaker[AsyncSession]) -> list[AuditRow]:
    sql = text("SELECT task_id, new_status, result_written, writer FROM fault_audit ORDER BY id")
    async with sessionmaker() as session:
        return [AuditRow(*row) for row in (await session.execute(sql)).all()]


async def _outbox(sessionmaker: async_sessionmaker[AsyncSession]) -> list[tuple[Any, Any]]:
    sql = text("SELECT task_id, payload->>'task_id' FROM outbox")
    async with sessionmaker() as session:
        return [tuple(row) for row in (await session.execute(sql)).all()]


async def _unfinished(sessionmaker: async_sessionmaker[AsyncSession], ids: list[uuid.UUID]) -> int:
    sql = text("SELECT count(*) FROM tasks WHERE id = ANY(:ids) AND status <> ALL(:terminal)")
    async with sessionmaker() as session:
        result = await session.execute(sql, {"ids": ids, "terminal": list(TERMINAL)})
        return int(result.scalar_one())


async def _unpublished(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    sql = text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    async with sessionmaker() as session:
        return int((await session.execute(sql)).scalar_one())


def wait_for_the_end(db: Db, ids: Iterable[uuid.UUID], deadline_s: float) -> None:
    """Until every task in `ids` is in a terminal state and the outbox holds nothing unsent
    (a relay that died mid-batch left its rows for another; none may be given up)."""
    wanted = list(ids)
    wait_until(
        lambda: db(lambda sm: _unfinished(sm, wanted)) == 0,
        deadline_s,
        f"{len(wanted)} accepted tasks to reach a terminal state",
        every_s=0.25,
    )
    wait_until(lambda: db(_unpublished) == 0, deadline_s, "every outbox row to be published")


def log_records(logs: Iterable[str]) -> list[dict[str, Any]]:
    records = []
    for log in logs:
        for line in log.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def broker_task_ids(client: redis.Redis) -> list[str]:
    """The task id of every message the broker still holds, dead-lettered ones included."""
    ids = []
    for key in client.scan_iter(match="dramatiq:*.msgs"):
        for raw in client.hvals(key):
            message = json.loads(raw)
            ids.append(str(message["kwargs"]["task_id"]))
    return ids


@dataclass
class Evidence:
    """Where to look for what the clients, the site, the workers and the broker saw."""

    outcomes: list[CreateOutcome]
    site: CountingSite
    stack: FaultStack
    broker: redis.Redis


def _check_creates(report: InvariantReport, outcomes: list[CreateOutcome]) -> None:
    unexpected = [o for o in outcomes if o.status is not None and not o.accepted and o.status < 500]
    assert not unexpected, f"creates refused for a reason other than a fault: {unexpected[:3]}"
    report.creates = len(outcomes)
    report.accepted = sum(o.accepted for o in outcomes)
    report.refused = sum(o.status is not None and o.status >= 500 for o in outcomes)
    report.not_sent = sum(o.status is None and not o.maybe_sent for o in outcomes)
    report.unknown_replayed = sum(o.replay_status is not None for o in outcomes)
    assert all(o.task_id for o in outcomes if o.accepted or o.replay_status), "a lost task id"


def _check_tasks(
    report: InvariantReport, outcomes: list[CreateOutcome], tasks: list[TaskFact]
) -> dict[str, TaskFact]:
    by_domain = {task.domain: task for task in tasks}
    assert len(by_domain) == len(tasks), "two tasks for one create"
    told = {o.domain: o.task_id for o in outcomes if o.task_id}
    failed = [o.domain for o in outcomes if o.task_id is None]
    present = [domain for domain in failed if domain in by_domain]
    assert not present, f"{len(present)} creates told of a failure left a task: {present[:3]}"
    assert set(by_domain) == set(told), (
        f"tasks nobody was told of: {sorted(set(by_domain) - set(told))[:3]}; "
        f"accepted creates without a task: {sorted(set(told) - set(by_domain))[:3]}"
    )
    wrong = [d for d, task_id in told.items() if str(by_domain[d].id) != task_id]
    assert not wrong, f"a client was given another task's id: {wrong[:3]}"
    unfinished = [t for t in tasks if t.status not in TERMINAL]
    assert not unfinished, f"{len(unfinished)} tasks never reached an end: {unfinished[:3]}"
    report.tasks = len(tasks)
    report.succeeded = sum(t.status == "succeeded" for t in tasks)
    report.rerun_tasks = sum(t.attempts > 1 for t in tasks)
    return by_domain


def _check_writes(report: InvariantReport, tasks: list[TaskFact], audit: list[AuditRow]) -> None:
    terminal = Counter(row.task_id for row in audit if row.new_status in TERMINAL)
    results = Counter(row.task_id for row in audit if row.result_written)
    twice = {task_id: n for task_id, n in terminal.items() if n > 1}
    assert not twice, f"tasks whose end was written more than once: {list(twice.items())[:3]}"
    twice = {task_id: n for task_id, n in results.items() if n > 1}
    assert not twice, f"tasks whose result was written more than once: {list(twice.items())[:3]}"
    assert all(terminal[t.id] == 1 for t in tasks), "a terminal task without its write"
    assert all(results[t.id] == 1 for t in tasks if t.status == "succeeded"), "a lost result"
    report.terminal_writes = sum(terminal.values())
    report.result_writes = sum(results.values())


def _check_site(
    report: InvariantReport, by_domain: dict[str, TaskFact], requests: Counter[str]
) -> None:
    strangers = set(requests) - set(by_domain)
    assert not strangers, f"scans of domains with no task: {sorted(strangers)[:3]}"
    for domain, task in by_domain.items():
        # Every fetch follows a claim, and every claim counts an attempt.
        assert requests[domain] <= task.attempts, f"{task}: fetched {requests[domain]} times"
        if task.status == "succeeded":
            assert task.title is not None, f"{task} succeeded without its page"
            number = int(task.title.rpartition("#")[2])
            assert 1 <= number <= requests[domain], f"{task}: result from fetch {number}?"
    report.site_fetches = sum(requests.values())


def _check_messages(
    report: InvariantReport,
    tasks: list[TaskFact],
    outbox: list[tuple[Any, Any]],
    evidence: Evidence,
) -> None:
    ids = {str(task.id) for task in tasks}
    assert all(str(task_id) == payload_id for task_id, payload_id in outbox), "payload mismatch"
    assert {str(task_id) for task_id, _ in outbox} == ids, "a task without its outbox row"
    in_broker = broker_task_ids(evidence.broker)
    assert set(in_broker) <= ids, f"broker messages for unknown tasks: {set(in_broker) - ids}"
    records = log_records(evidence.stack.all_logs("worker"))
    missing = [r for r in records if r.get("event") in MISSING_TASK_EVENTS]
    assert not missing, f"a worker was sent a task it could not find: {missing[:3]}"
    seen = {str(r["task_id"]) for r in records if r.get("task_id")}
    assert seen <= ids, f"workers saw task ids absent from the database: {sorted(seen - ids)[:3]}"
    report.outbox_rows = len(outbox)
    report.broker_messages = len(in_broker)
    report.worker_task_ids = len(seen)
    report.runs_finished = sum(r.get("event") == "task_finished" for r in records)
    report.duplicates_skipped = sum(r.get("event") == "task_not_claimable" for r in records)


def check(
    scenario: str, db: Db, evidence: Evidence, *, deadline_s: float, all_succeed: bool = True
) -> InvariantReport:
    """Wait for every accepted task to end, then assert the promise; returns what was counted."""
    report = InvariantReport(scenario)
    _check_creates(report, evidence.outcomes)
    ids = [uuid.UUID(o.task_id) for o in evidence.outcomes if o.task_id]
    wait_for_the_end(db, ids, deadline_s)
    tasks = db(_tasks)
    by_domain = _check_tasks(report, evidence.outcomes, tasks)
    _check_writes(report, tasks, db(_audit))
    _check_site(report, by_domain, evidence.site.snapshot())
    _check_messages(report, tasks, db(_outbox), evidence)
    if all_succeed:
        failed = [t for t in tasks if t.status != "succeeded"]
        assert not failed, f"{len(failed)} tasks did not succeed: {failed[:3]}"
    REPORTS.append(report)
    print(f"\ninvariants held: {report.line()}")
    return report
