"""Tables: users, tasks and the outbox. The API's schemas live apart from these."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.base import Base


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Lane(enum.IntEnum):
    """Which of a client's two dispatch windows a message waits in: single creates are
    never queued behind the client's own batches."""

    INTERACTIVE = 0
    BATCH = 1


# A task's lane, as SQL on a `tasks` row (the expression of ix_tasks_in_broker).
TASK_LANE_SQL = "(CASE WHEN batch_id IS NULL THEN 0 ELSE 1 END)"

TERMINAL_STATUSES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})
_STATUS_LIST = ", ".join(f"'{status.value}'" for status in TaskStatus)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    token_hash: Mapped[str] = mapped_column(Text, unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Signs completion callbacks (revision 0005); the previous one still signs during a
    # rotation. Never shown after it is created, never logged.
    callback_secret: Mapped[str | None] = mapped_column(Text)
    callback_secret_previous: Mapped[str | None] = mapped_column(Text)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_LIST})", name="status_known"),
        # Newest-first keyset pagination per user, optionally by status.
        Index("ix_tasks_user_created", "user_id", text("created_at DESC"), text("id DESC")),
        Index("ix_tasks_status_updated", "status", "updated_at"),
        # The leader walks queued tasks oldest first to check that their messages exist.
        Index("ix_tasks_queued", "queued_at", "id", postgresql_where=text("status = 'queued'")),
        # Idempotency keys are unique per user; rows without a key are unconstrained.
        Index(
            "uq_tasks_user_idempotency_key",
            "user_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # Each client's messages in the broker, by lane: the relay's dispatch window.
        Index(
            "ix_tasks_in_broker",
            "user_id",
            text(TASK_LANE_SQL),
            postgresql_where=text("status = 'queued'"),
        ),
        # A batch's tasks in submission order (keyset pages) and its counts by status.
        Index(
            "ix_tasks_batch",
            "batch_id",
            "batch_position",
            postgresql_where=text("batch_id IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    target_domain: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(Text, server_default=TaskStatus.PENDING.value)
    # Runs started (claims); a re-dispatch that was not the task's fault is not an attempt.
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    redispatches: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer, server_default=text("3"))
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The outbox row whose published message the task, while queued, waits for.
    queued_outbox_id: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The batch the task was submitted in, and its place there (revision 0004).
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("batches.id", ondelete="CASCADE")
    )
    batch_position: Mapped[int | None] = mapped_column(Integer)
    # Where to POST when the task ends (revision 0005); tasks of a batch use the batch's.
    callback_url: Mapped[str | None] = mapped_column(Text)


class Batch(Base):
    """Tasks submitted together with one scan config; their states live on the tasks."""

    __tablename__ = "batches"
    __table_args__ = (
        Index(
            "uq_batches_user_idempotency_key",
            "user_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # A user's batches newest first (keyset pages of GET /api/v1/batches).
        Index("ix_batches_user_created", "user_id", text("created_at DESC"), text("id DESC")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    task_count: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Where to POST once every task has ended (revision 0005).
    callback_url: Mapped[str | None] = mapped_column(Text)


class Schedule(Base):
    """A recurring scan (revision 0009): its timing, what it scans, and when it fires next.
    Each run is a batch (`ScheduleRun`)."""

    __tablename__ = "schedules"
    __table_args__ = (
        CheckConstraint("(cron IS NULL) <> (interval_s IS NULL)", name="cron_or_interval"),
        CheckConstraint("missed IN ('run_once', 'skip')", name="missed_known"),
        Index(
            "ix_schedules_due", "next_fire_at", postgresql_where=text("next_fire_at IS NOT NULL")
        ),
        Index("ix_schedules_user", "user_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(Text)
    cron: Mapped[str | None] = mapped_column(Text)
    timezone: Mapped[str] = mapped_column(Text, server_default=text("'UTC'"))
    interval_s: Mapped[int | None] = mapped_column(Integer)
    # Interval ticks fall at anchor_at + k * interval_s.
    anchor_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    domains: Mapped[list[str]] = mapped_column(ARRAY(Text))
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    callback_url: Mapped[str | None] = mapped_column(Text)
    # True: no batch callback; one `schedule.run.changed` callback when a domain changed.
    callback_changes_only: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    missed: Mapped[str] = mapped_column(Text, server_default=text("'run_once'"))
    # NULL while paused: a paused schedule is not in ix_schedules_due at all.
    next_fire_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    paused_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_fired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ScheduleRun(Base):
    """One tick of a schedule: its batch, or why none was made (`skipped_reason`)."""

    __tablename__ = "schedule_runs"
    __table_args__ = (
        Index("uq_schedule_runs_tick", "schedule_id", "tick_at", unique=True),
        Index(
            "ix_schedule_runs_unreported",
            "id",
            postgresql_where=text("reported_at IS NULL AND batch_id IS NOT NULL"),
        ),
        Index("ix_schedule_runs_batch", "batch_id", postgresql_where=text("batch_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    schedule_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("schedules.id", ondelete="CASCADE")
    )
    user_id: Mapped[int] = mapped_column(BigInteger)
    tick_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    fired_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("clock_timestamp()")
    )
    # Ticks merged into this run (run_once) or skipped with it (skip) after a downtime.
    missed_ticks: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("batches.id", ondelete="SET NULL")
    )
    skipped_reason: Mapped[str | None] = mapped_column(Text)
    # Set once the run's batch has ended and was compared with the previous run.
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    changes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)


OUTBOX_STORAGE = {
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "5000",
    "autovacuum_vacuum_cost_delay": "0",
}


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        # The backlog by client and lane, oldest first: the relay's claim reads only this
        # index, so its cost stays flat however many published rows the table still holds
        # (revision 0006; it replaced ix_outbox_unpublished, the backlog by id alone).
        Index(
            "ix_outbox_backlog",
            "user_id",
            "lane",
            "id",
            postgresql_include=["available_at"],
            postgresql_where=text("published_at IS NULL AND dead_at IS NULL"),
        ),
        Index("ix_outbox_task_id", "task_id"),
        Index("ix_outbox_published_at", "published_at"),
        # Dead rows are few; counting and listing them must not scan the table.
        Index("ix_outbox_dead", "id", postgresql_where=text("dead_at IS NOT NULL")),
        # Publishing is a non-HOT update, so every published row leaves a dead entry in
        # ix_outbox_backlog that each claim walks until VACUUM removes it. Vacuum
        # after a fixed number of dead rows, not a fraction of a table that keeps days
        # of history, and without cost throttling (revision 0002; see README).
        {"postgresql_with": OUTBOX_STORAGE},
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    actor: Mapped[str] = mapped_column(Text)
    queue: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    task_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tasks.id", ondelete="CASCADE")
    )
    # The client whose window the message counts in, and its lane (`Lane`); 0/0 for a
    # row written without a task, which no window limits.
    user_id: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    lane: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    available_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    publish_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The id the broker stores the published message under (Dramatiq's redis_message_id).
    broker_message_id: Mapped[str | None] = mapped_column(Text)
    dead_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BrokerState(Base):
    """One row: the broker epoch the relays last saw, and the broker server's run id."""

    __tablename__ = "broker_state"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, server_default=text("1"))
    epoch: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Delivery(Base):
    """A completion callback to POST, written by the transaction that ended its task or
    batch (a trigger, revision 0005), delivered at least once by the relays."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index(
            "ix_deliveries_pending",
            "available_at",
            "id",
            postgresql_where=text("delivered_at IS NULL AND dead_at IS NULL"),
        ),
        Index("ix_deliveries_dead", "id", postgresql_where=text("dead_at IS NOT NULL")),
        Index("ix_deliveries_task_id", "task_id"),
        Index("ix_deliveries_user_id", "user_id", "id"),
        Index(
            "uq_deliveries_batch",
            "batch_id",
            unique=True,
            postgresql_where=text("batch_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    task_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tasks.id", ondelete="CASCADE")
    )
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("batches.id", ondelete="CASCADE")
    )
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    available_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dead_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeliveryAttempt(Base):
    """One try of a delivery: when, how long, and what came of it (revision 0007)."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (Index("ix_delivery_attempts_delivery", "delivery_row_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    delivery_row_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(Integer)
    status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # delivered, failed (tried again), gone (410: ended), dead (no tries left or refused)
    outcome: Mapped[str] = mapped_column(Text)
