"""The outbox aggregate: how a message is written next to a task change, and the relay's
claim, publish, back-off, dead-letter and replay statements. None of them commits.

Idiom: `text()` statements built once at import. They are PostgreSQL-specific (data-
modifying CTEs, `unnest` of arrays, `FOR UPDATE SKIP LOCKED`, `make_interval`) and read
more clearly as SQL than as expression trees. Statuses come from `predicates`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    Float,
    Integer,
    Text,
    bindparam,
    column,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from shared.db import predicates
from shared.db.models import TASK_LANE_SQL
from shared.messages import OutboxEntry

# --- writing messages next to task changes -----------------------------------

# The one way an outbox row is written: for 1..N entries, one array per column, joined on the
# tasks a statement just wrote. A create, a retry, a batch, a schedule run, a worker's defer
# or requeue and the leader's redispatch all write their rows through it.
ENTRY_BINDS: tuple[BindParameter[Any], ...] = (
    bindparam("message_ids", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("task_ids", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("actors", type_=ARRAY(Text)),
    bindparam("queues", type_=ARRAY(Text)),
    bindparam("payloads", type_=ARRAY(Text)),
)


def insert_entries_sql(source: str, due: str = "now()") -> str:
    """SQL inserting the entries bound by `entries_params`, one row for each entry whose task
    `source` (a CTE or table with `id`, `user_id`, `batch_id`) holds, due at `due`, in the
    task's client window and lane. An entry whose task the statement did not write (an
    idempotency conflict, a transition that did not match) writes nothing, so a task change
    and its message commit together or not at all."""
    return f"""
        INSERT INTO outbox (message_id, actor, queue, payload, task_id, user_id, lane,
                            available_at)
        SELECT m.message_id, m.actor, m.queue, CAST(m.payload AS jsonb), t.id, t.user_id,
               {TASK_LANE_SQL}, {due}
        FROM unnest(CAST(:message_ids AS uuid[]), CAST(:task_ids AS uuid[]),
                    CAST(:actors AS text[]), CAST(:queues AS text[]),
                    CAST(:payloads AS text[])) AS m(message_id, task_id, actor, queue, payload)
        JOIN {source} t ON t.id = m.task_id
    """


def entries_params(entries: Sequence[OutboxEntry]) -> dict[str, Any]:
    """The values `insert_entries_sql` binds, one array element per entry."""
    return {
        "message_ids": [e.message_id for e in entries],
        "task_ids": [e.task_id for e in entries],
        "actors": [e.actor for e in entries],
        "queues": [e.queue for e in entries],
        "payloads": [json.dumps(e.payload) for e in entries],
    }


# For tasks already written (the leader's redispatch puts them back to pending first).
_INSERT_MESSAGES_SQL = text(insert_entries_sql("tasks")).bindparams(*ENTRY_BINDS)


async def insert_messages(session: AsyncSession, entries: Sequence[OutboxEntry]) -> None:
    """Append one message per entry (each for an existing task) in the caller's transaction,
    in one statement."""
    if entries:
        await session.execute(_INSERT_MESSAGES_SQL, entries_params(entries))


# --- the relay ---------------------------------------------------------------

# The relay runs its statements on a Core connection; tools and tests on a session.
Executor = AsyncConnection | AsyncSession


@dataclass(frozen=True)
class ClaimedMessage:
    id: int
    message_id: uuid.UUID
    actor: str
    queue: str
    payload: dict[str, Any]
    task_id: uuid.UUID | None
    publish_attempts: int
    age_s: float = 0.0  # since the row was written, on the database's clock


# The claim shares the broker fairly between clients. The outbox is the backlog; the broker
# holds at most `:window` messages per client and lane (tasks `queued`: published, not yet
# claimed by a worker), refilled as workers claim them, once half the window is free (a
# refill per few messages would keep a relay busy with tiny batches). Within a batch, rows go out
# interactive lane first, then taking turns across clients (ties in random order, so no
# client is always first), each client's rows oldest first. `backlog` is a skip scan of
# ix_outbox_backlog: one index probe per client and lane, however long the backlog. Each
# lane's rows are locked SKIP LOCKED as they are picked, so relays never wait for each other
# and a frozen relay's rows are stepped over; a relay does not see another's uncommitted
# batch, so with R relays a lane may briefly hold up to R windows.
# The rows are picked from the index alone (`i`), then locked by primary key: a lane looks
# past `LOCK_SLACK` times its room, enough to step over what other relays hold.
# Rows of user 0 (written without a task) have no client to count: no window limits them.
# The single result row with `id` NULL says nothing was claimed; `window_full` says a
# client had more due rows than room, so the relay should look again soon; `client_lanes`
# how many client lanes have a backlog (the relay shares its window between them).
LOCK_SLACK = 4
_CLAIM_BATCH_SQL = text(
    f"""
    WITH RECURSIVE backlog(user_id, lane) AS (
        (SELECT user_id, lane FROM outbox
         WHERE published_at IS NULL AND dead_at IS NULL
         ORDER BY user_id, lane LIMIT 1)
        UNION ALL
        SELECT later.user_id, later.lane FROM backlog, LATERAL (
            SELECT o.user_id, o.lane FROM outbox o
            WHERE o.published_at IS NULL AND o.dead_at IS NULL
              AND (o.user_id, o.lane) > (backlog.user_id, backlog.lane)
            ORDER BY o.user_id, o.lane LIMIT 1
        ) later
    ), windows AS (
        SELECT backlog.user_id, backlog.lane,
               CASE WHEN backlog.user_id = 0 THEN :limit
                    WHEN (:window - in_broker.n) * 2 >= :window THEN :window - in_broker.n
                    ELSE 0
               END AS room
        FROM backlog, LATERAL (
            SELECT count(*) AS n FROM (
                SELECT 1 FROM tasks t
                WHERE t.user_id = backlog.user_id AND t.status = {predicates.QUEUED}
                  AND {TASK_LANE_SQL} = backlog.lane
                LIMIT :window) held
        ) in_broker
    ), candidates AS MATERIALIZED (
        SELECT due.id, windows.lane,
               row_number() OVER (PARTITION BY windows.user_id, windows.lane
                                  ORDER BY due.id) AS turn
        FROM windows, LATERAL (
            SELECT o.id FROM outbox o
            WHERE o.id = ANY(ARRAY(
                    SELECT i.id FROM outbox i
                    WHERE i.user_id = windows.user_id AND i.lane = windows.lane
                      AND i.published_at IS NULL AND i.dead_at IS NULL
                      AND i.available_at <= now()
                    ORDER BY i.user_id, i.lane, i.id
                    LIMIT GREATEST(LEAST(windows.room, :limit), 0) * :lock_slack))
              AND o.published_at IS NULL AND o.dead_at IS NULL
            ORDER BY o.id
            LIMIT GREATEST(LEAST(windows.room, :limit), 0)
            FOR UPDATE SKIP LOCKED
        ) due
    ), chosen AS (
        SELECT id, lane, turn FROM candidates ORDER BY lane, turn, random() LIMIT :limit
    ), claimed AS (
        SELECT o.id, o.message_id, o.actor, o.queue, o.payload, o.task_id,
               o.publish_attempts,
               CAST(EXTRACT(EPOCH FROM clock_timestamp() - o.created_at) AS float8) AS age_s
        FROM outbox o WHERE o.id = ANY(ARRAY(SELECT id FROM chosen))
    )
    SELECT claimed.id, claimed.message_id, claimed.actor, claimed.queue, claimed.payload,
           claimed.task_id, claimed.publish_attempts, claimed.age_s,
           EXISTS (SELECT 1 FROM windows WHERE EXISTS (
               SELECT 1 FROM outbox o
               WHERE o.user_id = windows.user_id AND o.lane = windows.lane
                 AND o.published_at IS NULL AND o.dead_at IS NULL AND o.available_at <= now()
               ORDER BY o.user_id, o.lane, o.id
               OFFSET GREATEST(windows.room, 0) LIMIT 1)) AS window_full,
           (SELECT count(*) FROM backlog) AS client_lanes
    FROM (SELECT 1) AS one
    LEFT JOIN (claimed JOIN chosen ON chosen.id = claimed.id) ON true
    ORDER BY chosen.lane, chosen.turn, random()
    """
).columns(
    column("id", BigInteger),
    column("message_id", UUID(as_uuid=True)),
    column("actor", Text),
    column("queue", Text),
    column("payload", JSONB),
    column("task_id", UUID(as_uuid=True)),
    column("publish_attempts", Integer),
    column("age_s", Float),
    column("window_full", Boolean),
    column("client_lanes", Integer),
)


@dataclass(frozen=True)
class ClaimedBatch:
    messages: list[ClaimedMessage]
    # A client had more due rows than its window had room for: look again soon.
    window_full: bool
    # Client lanes with a backlog (due or not), the claimed ones included.
    client_lanes: int


async def claim_batch(session: Executor, limit: int, window: int) -> ClaimedBatch:
    """Lock up to `limit` due, unpublished rows that no other relay holds, at most `window`
    in the broker per client and lane, taking turns across clients, each client's oldest
    first."""
    params = {"limit": limit, "window": window, "lock_slack": LOCK_SLACK}
    rows = (await session.execute(_CLAIM_BATCH_SQL, params)).all()
    messages = [ClaimedMessage(*row[:8]) for row in rows if row[0] is not None]
    return ClaimedBatch(messages, bool(rows[0][8]), int(rows[0][9]))


# Rows and their tasks change together: a task becomes `queued` only if it is
# still `pending` (a worker may already have claimed it from the broker), and only
# for its newest message (a worker may have deferred it, writing a newer row, before
# this batch committed). The task records which row it waits on, and the row the id
# the broker stores it under, so the leader can later ask the broker whether that
# message still exists. clock_timestamp(), not now(): the moment the broker took the
# batch, not when the claim's transaction began. The status test is written so that
# no index on status can serve it: with statistics from before a burst of new tasks,
# the planner would otherwise read every pending task for each batch instead of
# looking up the batch's tasks by primary key.
# The transaction that marks rows published commits without waiting for its WAL flush
# (`synchronous_commit` off for this transaction only, set inside the statement: no extra
# round trip, and nothing left on a pooled server session). A worker that takes the message
# at once waits on this row lock of its task until that commit; the flush was most of the
# time from the publish to the worker's claim. Losing the commit in a server crash is the
# case of a relay that died after sending: the row is sent again and the worker's claim
# makes the second message a no-op. Any later durable commit (the worker's claim) flushes
# the WAL before it, this commit with it.
_MARK_PUBLISHED_SQL = text(
    f"""
    WITH published AS (
        UPDATE outbox o SET published_at = clock_timestamp(), last_error = NULL,
                            broker_message_id = sent.broker_message_id
        FROM unnest(CAST(:ids AS bigint[]), CAST(:broker_ids AS text[]))
             AS sent(id, broker_message_id)
        WHERE o.id = sent.id
        RETURNING o.id, o.task_id
    ), relaxed AS MATERIALIZED (
        SELECT set_config('synchronous_commit', 'off', true) AS setting
    )
    UPDATE tasks t SET status = {predicates.QUEUED}, queued_at = now(),
                       queued_outbox_id = published.id, updated_at = now()
    FROM published, relaxed
    WHERE t.id = published.task_id AND (t.status = {predicates.PENDING}) IS TRUE
      AND NOT EXISTS (SELECT 1 FROM outbox newer
                      WHERE newer.task_id = published.task_id AND newer.id > published.id)
    """
)


@dataclass(frozen=True)
class PublishedMessage:
    outbox_id: int
    broker_message_id: str


async def mark_published(session: Executor, published: Sequence[PublishedMessage]) -> None:
    """Mark rows published under their broker ids, and their tasks queued on them; the
    transaction then commits without waiting for its WAL flush."""
    if published:
        params = {
            "ids": [p.outbox_id for p in published],
            "broker_ids": [p.broker_message_id for p in published],
        }
        await session.execute(_MARK_PUBLISHED_SQL, params)


_RECORD_FAILURE_SQL = text(
    """
    UPDATE outbox SET publish_attempts = publish_attempts + 1, last_error = :error,
                      available_at = now() + make_interval(secs => :retry_in_s)
    WHERE id = :id
    """
).bindparams(bindparam("retry_in_s", type_=Float))


@dataclass(frozen=True)
class PublishFailure:
    outbox_id: int
    error: str
    retry_in_s: float


async def record_publish_failures(session: Executor, failures: Sequence[PublishFailure]) -> None:
    """Keep each row unpublished, count the attempt and push `available_at` back, in one
    round trip."""
    if failures:
        params = [
            {"id": f.outbox_id, "error": f.error, "retry_in_s": f.retry_in_s} for f in failures
        ]
        await session.execute(_RECORD_FAILURE_SQL, params)


# Only rows that failed to publish (publish_attempts > 0): a row deliberately
# written with a later available_at (a deferred task) keeps its time.
_RELEASE_BACKOFF_SQL = text(
    """
    UPDATE outbox SET available_at = now()
    WHERE published_at IS NULL AND dead_at IS NULL
      AND publish_attempts > 0 AND available_at > now()
    """
)


async def release_backoff(session: Executor) -> int:
    """Make every row backing off after a failed publish due now (the broker is back)."""
    result = await session.execute(_RELEASE_BACKOFF_SQL)
    return int(result.rowcount)  # type: ignore[attr-defined]


# Failing the task fires the deliveries trigger `task_finished_callbacks` (revision 0005,
# docs/design.md "Completion callbacks"): its callback rows are written in this transaction.
_MARK_DEAD_SQL = text(
    f"""
    WITH dead AS (
        UPDATE outbox SET dead_at = now(), last_error = :error,
                          publish_attempts = publish_attempts + 1
        WHERE id = :id
        RETURNING task_id
    )
    UPDATE tasks SET status = {predicates.FAILED}, error = :error, finished_at = now(),
                     updated_at = now()
    WHERE id IN (SELECT task_id FROM dead) AND {predicates.WAITING}
    """
)


async def mark_dead(session: Executor, outbox_id: int, error: str) -> None:
    """Give up on a message that can never be published, and fail its task with the reason."""
    await session.execute(_MARK_DEAD_SQL, {"id": outbox_id, "error": error})


# --- replay of dead rows (scanctl, /ops) -------------------------------------


@dataclass(frozen=True)
class ReplayedMessage:
    id: int
    task_id: uuid.UUID | None
    task_revived: bool


# A dead row's task goes back to pending only if that row is what failed it: the
# task is failed with the row's error and no newer message exists for it (a retry
# since then owns the task).
_REPLAY_DEAD_SQL = text(
    f"""
    WITH replayed AS (
        UPDATE outbox SET dead_at = NULL, available_at = now(), publish_attempts = 0
        WHERE dead_at IS NOT NULL AND (CAST(:all_dead AS boolean) OR id = ANY(:ids))
        RETURNING id, task_id, last_error
    ), revived AS (
        UPDATE tasks SET status = {predicates.PENDING}, error = NULL, finished_at = NULL,
                         updated_at = now()
        FROM replayed
        WHERE tasks.id = replayed.task_id AND tasks.status = {predicates.FAILED}
          AND tasks.error IS NOT DISTINCT FROM replayed.last_error
          AND NOT EXISTS (SELECT 1 FROM outbox newer
                          WHERE newer.task_id = replayed.task_id AND newer.id > replayed.id)
        RETURNING tasks.id
    )
    SELECT id, task_id, task_id IN (SELECT id FROM revived) FROM replayed ORDER BY id
    """
)


async def replay_dead_messages(
    session: AsyncSession, ids: Sequence[int] | None
) -> list[ReplayedMessage]:
    """Dead rows (`ids`, or all if None) become due again; tasks they failed go back to pending."""
    params = {"all_dead": ids is None, "ids": list(ids or [])}
    rows = (await session.execute(_REPLAY_DEAD_SQL, params)).all()
    return [ReplayedMessage(row[0], row[1], bool(row[2])) for row in rows]
