"""What each dashboard page shows, gathered from the database and Redis (no HTML here)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import redis.asyncio as aioredis
from markupsafe import Markup
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service.ui import charts, presence, reads
from shared import health_report, keys, redis_clients
from shared.db import callbacks, inspection
from shared.db.models import TERMINAL_STATUSES, Delivery, OutboxMessage, Task, TaskStatus
from shared.settings import Settings

CHART_MINUTES = 60
# The relay's leader-election connection: one per running relay.
RELAY_ELECTION_APP = keys.RELAY_ELECTION_APPLICATION_NAME


@dataclass(frozen=True)
class Overview:
    health: health_report.HealthReport
    activity_chart: Markup | None
    latency_chart: Markup | None
    latency: reads.StartLatency | None
    relays: list[reads.RelayConnection]
    broker: presence.BrokerPresence
    database_error: str | None
    callbacks: callbacks.DeliverySummary | None = None

    @property
    def relay_count(self) -> int:
        return sum(1 for c in self.relays if c.application_name == RELAY_ELECTION_APP)

    @property
    def leader(self) -> reads.RelayConnection | None:
        return next((c for c in self.relays if c.leader), None)


def _minute_labels(minutes: Sequence[datetime]) -> list[str]:
    return [minute.strftime("%H:%M") for minute in minutes]


def activity_chart(rows: Sequence[reads.MinuteActivity]) -> Markup:
    labels = _minute_labels([row.minute for row in rows])
    return charts.line_chart(
        "Tasks created, messages published and tasks finished per minute",
        labels,
        [
            charts.Series("created", "s-created", [row.created for row in rows]),
            charts.Series("published", "s-published", [row.published for row in rows]),
            charts.Series("finished", "s-finished", [row.finished for row in rows]),
        ],
    )


def latency_chart(minutes: Sequence[datetime], per_minute: Sequence[reads.StartLatency]) -> Markup:
    by_minute = {row.minute: row for row in per_minute}
    p50 = [by_minute[m].p50_ms if m in by_minute else None for m in minutes]
    p95 = [by_minute[m].p95_ms if m in by_minute else None for m in minutes]
    return charts.line_chart(
        "Commit-to-start latency per minute (p50, p95)",
        _minute_labels(minutes),
        [charts.Series("p50", "s-p50", p50), charts.Series("p95", "s-p95", p95)],
        unit=" ms",
    )


async def _broker_presence(redis: aioredis.Redis, settings: Settings) -> presence.BrokerPresence:
    now_ms = int(time.time() * 1000)
    if not redis_clients.separate_broker(settings):
        return await presence.broker_presence(redis, now_ms)
    client = redis_clients.async_client(settings, broker=True, timeout_s=settings.redis_timeout_s)
    try:
        return await presence.broker_presence(client, now_ms)
    finally:
        await redis_clients.aclose(client)


async def load_overview(
    sessionmaker: async_sessionmaker[AsyncSession], redis: aioredis.Redis, settings: Settings
) -> Overview:
    """Everything the overview shows; a database that fails leaves its parts empty."""
    report = await health_report.gather_health(sessionmaker, redis, settings)
    broker = await _broker_presence(redis, settings)
    empty = Overview(report, None, None, None, [], broker, None)
    if not report.database_reachable:
        return empty
    try:
        async with sessionmaker() as session:
            activity = await reads.activity_per_minute(session, CHART_MINUTES)
            overall, per_minute = await reads.start_latency(session, CHART_MINUTES)
            relays = await reads.relay_connections(session, keys.RELAY_LEADER_LOCK)
            deliveries = await callbacks.summarize(session)
    except (SQLAlchemyError, OSError) as exc:
        # The class only: a driver's message may quote the connection string.
        return Overview(report, None, None, None, [], broker, type(exc).__name__)
    minutes = [row.minute for row in activity]
    return Overview(
        health=report,
        activity_chart=activity_chart(activity),
        latency_chart=latency_chart(minutes, per_minute),
        latency=overall,
        relays=relays,
        broker=broker,
        database_error=None,
        callbacks=deliveries,
    )


@dataclass(frozen=True)
class Step:
    """One point of a task's timeline; `gap_ms` is from the previous point shown."""

    name: str
    at: datetime
    gap_ms: float | None


def dispatch_message(task: Task, messages: Sequence[OutboxMessage]) -> OutboxMessage | None:
    """The message behind the current run: the newest one due before it started (or the
    newest one, while the task has not started)."""
    if task.started_at is None:
        return messages[-1] if messages else None
    due = [m for m in messages if m.available_at <= task.started_at]
    return due[-1] if due else None


def timeline(task: Task, messages: Sequence[OutboxMessage]) -> list[Step]:
    """created → (message due, when later than creation) → published → started → finished."""
    message = dispatch_message(task, messages)
    points: list[tuple[str, datetime | None]] = [("created", task.created_at)]
    if message is not None:
        if message.available_at > task.created_at:
            points.append(("message due", message.available_at))
        points.append(("published", message.published_at))
    points += [("started", task.started_at), ("finished", task.finished_at)]
    steps: list[Step] = []
    for name, at in points:
        if at is None:
            continue
        gap = (at - steps[-1].at).total_seconds() * 1000 if steps else None
        steps.append(Step(name, at, gap))
    return steps


@dataclass(frozen=True)
class TaskDetail:
    task: Task
    owner: str
    messages: Sequence[OutboxMessage]
    steps: list[Step]
    deliveries: Sequence[Delivery]

    @property
    def can_retry(self) -> bool:
        return self.task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)

    @property
    def can_cancel(self) -> bool:
        return self.task.status not in TERMINAL_STATUSES

    @property
    def total_ms(self) -> float | None:
        if self.task.finished_at is None:
            return None
        return (self.task.finished_at - self.task.created_at).total_seconds() * 1000


async def load_task(session: AsyncSession, task_id: uuid.UUID) -> TaskDetail | None:
    found = await inspection.get_task_with_owner(session, task_id)
    if found is None:
        return None
    task, owner = found
    messages = await reads.list_task_messages(session, task_id)
    deliveries = await reads.list_task_deliveries(session, task)
    return TaskDetail(task, owner, messages, timeline(task, messages), deliveries)
