"""Statements for batches: many tasks and their outbox rows in one set-based statement,
and the reads behind `GET /api/v1/batches/{id}`. None of them commits.

Idiom: `text()` built once at import for the set-based create, the progress and the
exports (lines and CSV built by PostgreSQL); expression language on the models for the reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, bindparam, select, text, tuple_
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import Text

from shared.db import outbox
from shared.db.models import Batch, Task
from shared.messages import OutboxEntry

# One statement, one round trip, whatever the batch size: the batch row, every task
# (unnest of the arrays, never a loop) and, joined on the tasks actually inserted, every
# outbox row (`outbox.insert_entries_sql`, the one outbox writer). An idempotency-key conflict
# on the batch inserts nothing at all. The outbox trigger is FOR EACH STATEMENT, so the whole
# batch sends one NOTIFY, delivered at commit.
_CREATE_BATCH_SQL = text(
    f"""
    WITH new_batch AS (
        INSERT INTO batches (id, user_id, config, task_count, idempotency_key, request_hash,
                             callback_url)
        VALUES (:batch_id, :user_id, :config, cardinality(CAST(:task_ids AS uuid[])),
                :idempotency_key, :request_hash, :callback_url)
        ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, user_id, config
    ), new_tasks AS (
        INSERT INTO tasks (id, user_id, target_domain, config, max_attempts,
                           batch_id, batch_position)
        SELECT t.id, b.user_id, t.domain, b.config, :max_attempts, b.id, t.position - 1
        FROM new_batch b,
             unnest(CAST(:task_ids AS uuid[]), CAST(:domains AS text[]))
                 WITH ORDINALITY AS t(id, domain, position)
        RETURNING id, user_id, batch_id
    ), new_messages AS ({outbox.insert_entries_sql("new_tasks")})
    SELECT id FROM new_batch
    """
).bindparams(
    bindparam("batch_id", type_=UUID(as_uuid=True)),
    bindparam("config", type_=JSONB),
    bindparam("domains", type_=ARRAY(Text)),
    *outbox.ENTRY_BINDS,
)


@dataclass(frozen=True)
class NewBatch:
    id: uuid.UUID
    user_id: int
    config: dict[str, Any]
    max_attempts: int
    request_hash: str
    idempotency_key: str | None
    # One entry per task, in submission order.
    domains: Sequence[str]
    entries: Sequence[OutboxEntry]
    callback_url: str | None = None


async def insert_batch(session: AsyncSession, new: NewBatch) -> bool:
    """Insert the batch, its pending tasks and their outbox rows; False (nothing written)
    when the user already has a batch with this idempotency key."""
    params = {
        "batch_id": new.id,
        "user_id": new.user_id,
        "config": new.config,
        "max_attempts": new.max_attempts,
        "idempotency_key": new.idempotency_key,
        "request_hash": new.request_hash,
        "callback_url": new.callback_url,
        "domains": list(new.domains),
        **outbox.entries_params(new.entries),
    }
    return (await session.execute(_CREATE_BATCH_SQL, params)).first() is not None


async def get_batch_by_idempotency_key(
    session: AsyncSession, user_id: int, key: str
) -> Batch | None:
    stmt = select(Batch).where(Batch.user_id == user_id, Batch.idempotency_key == key)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_user_batch(session: AsyncSession, user_id: int, batch_id: uuid.UUID) -> Batch | None:
    """The user's own batch; None for a missing batch and for another user's alike."""
    stmt = select(Batch).where(Batch.id == batch_id, Batch.user_id == user_id)
    return (await session.execute(stmt)).scalar_one_or_none()


@dataclass(frozen=True)
class BatchProgress:
    counts: dict[str, int]
    updated_at: datetime | None
    finished_at: datetime | None  # the last task's end, once every task has ended


_PROGRESS_SQL = text(
    """
    SELECT batch_id, status, count(*) AS n, max(updated_at) AS updated_at,
           max(finished_at) AS finished_at
    FROM tasks WHERE batch_id = ANY(:batch_ids) GROUP BY batch_id, status
    """
).bindparams(bindparam("batch_ids", type_=ARRAY(UUID(as_uuid=True))))


async def get_batches_progress(
    session: AsyncSession, batch_ids: Sequence[uuid.UUID], terminal: frozenset[str]
) -> dict[uuid.UUID, BatchProgress]:
    """For each batch: its tasks by status (one index range scan each), the latest change
    and, when every task is in `terminal`, the latest end."""
    rows = (await session.execute(_PROGRESS_SQL, {"batch_ids": list(batch_ids)})).all()
    by_batch: dict[uuid.UUID, list[Any]] = {batch_id: [] for batch_id in batch_ids}
    for row in rows:
        by_batch[row.batch_id].append(row)
    return {batch_id: _progress(found, terminal) for batch_id, found in by_batch.items()}


def _progress(rows: Sequence[Any], terminal: frozenset[str]) -> BatchProgress:
    counts = {row.status: int(row.n) for row in rows}
    updated = max((row.updated_at for row in rows), default=None)
    done = bool(rows) and all(row.status in terminal for row in rows)
    finished = max((row.finished_at for row in rows if row.finished_at), default=None)
    return BatchProgress(counts, updated, finished if done else None)


async def get_batch_progress(
    session: AsyncSession, batch_id: uuid.UUID, terminal: frozenset[str]
) -> BatchProgress:
    return (await get_batches_progress(session, [batch_id], terminal))[batch_id]


async def list_user_batches(
    session: AsyncSession,
    user_id: int,
    *,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> Sequence[Batch]:
    """The user's batches newest first; `before` is the (created_at, id) of the last seen."""
    stmt = select(Batch).where(Batch.user_id == user_id)
    if before is not None:
        stmt = stmt.where(tuple_(Batch.created_at, Batch.id) < tuple_(*before))
    stmt = stmt.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
    return (await session.execute(stmt)).scalars().all()


async def list_batch_tasks(
    session: AsyncSession, batch_id: uuid.UUID, *, after_position: int, limit: int
) -> Sequence[Task]:
    """The batch's tasks in submission order, from just after `after_position` (-1: start)."""
    stmt = (
        select(Task)
        .where(Task.batch_id == batch_id, Task.batch_position > after_position)
        .order_by(Task.batch_position)
        .limit(limit)
        # A session that read these tasks before must see their current state.
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalars().all()


# --- results, for export ---------------------------------------------------------

# Each row as one NDJSON line, built by PostgreSQL: the report is never decoded and encoded
# again in Python, and timestamps come out in ISO 8601.
_RESULT_LINES_SQL = text(
    """
    SELECT batch_position,
           json_build_object('id', id, 'target_domain', target_domain, 'status', status,
                             'attempts', attempts, 'error', error, 'created_at', created_at,
                             'finished_at', finished_at, 'result', result)::text AS line
    FROM tasks
    WHERE batch_id = :batch_id AND batch_position > :after
    ORDER BY batch_position LIMIT :limit
    """
).bindparams(bindparam("batch_id", type_=UUID(as_uuid=True)))

# A cell that starts like a formula is shown as text by a spreadsheet, never run: titles, URLs
# and errors come from the scanned sites (OWASP "CSV injection").
_FORMULA_START = "('=', '+', '-', '@', chr(9), chr(13))"


def _csv_cell(expression: str, *, from_outside: bool = False) -> str:
    """SQL for one RFC 4180 cell: always quoted, quotes doubled, NULL an empty cell."""
    value = f"({expression})::text"
    if from_outside:
        quoted = f"chr(39) || {value}"  # a leading apostrophe
        value = f"CASE WHEN left({value}, 1) IN {_FORMULA_START} THEN {quoted} ELSE {value} END"
    return f"coalesce(chr(34) || replace({value}, chr(34), chr(34) || chr(34)) || chr(34), '')"


def _iso(column: str) -> str:
    return f"to_json({column}) #>> '{{}}'"


# The report's main facts, the HTTPS page first (as the worker prefers it), then plain HTTP;
# and the whole report in `result`.
CSV_COLUMNS = {
    "task_id": _csv_cell("id"),
    "target_domain": _csv_cell("target_domain", from_outside=True),
    "status": _csv_cell("status"),
    "attempts": _csv_cell("attempts"),
    "error": _csv_cell("error", from_outside=True),
    "created_at": _csv_cell(_iso("created_at")),
    "finished_at": _csv_cell(_iso("finished_at")),
    "http_status": _csv_cell("coalesce(result->'https'->>'status', result->'http'->>'status')"),
    "title": _csv_cell(
        "coalesce(result->'https'->>'title', result->'http'->>'title')", from_outside=True
    ),
    "final_url": _csv_cell(
        "coalesce(result->'https'->>'url', result->'http'->>'url')", from_outside=True
    ),
    "tls_not_after": _csv_cell("result->'https'->'tls'->>'not_after'", from_outside=True),
    "findings": _csv_cell(
        "CASE WHEN jsonb_typeof(result->'findings') = 'array' "
        "THEN jsonb_array_length(result->'findings') END"
    ),
    "result": _csv_cell("result"),
}

# Each row as one CSV record, built by PostgreSQL like the NDJSON lines.
_RESULT_CSV_SQL = text(
    f"""
    SELECT batch_position, concat_ws(',', {", ".join(CSV_COLUMNS.values())}) AS line
    FROM tasks
    WHERE batch_id = :batch_id AND batch_position > :after
    ORDER BY batch_position LIMIT :limit
    """
).bindparams(bindparam("batch_id", type_=UUID(as_uuid=True)))


async def read_result_lines(
    session: AsyncSession, batch_id: uuid.UUID, *, after_position: int, limit: int
) -> Sequence[Any]:
    """Up to `limit` tasks after `after_position` as (batch_position, line) rows."""
    params = {"batch_id": batch_id, "after": after_position, "limit": limit}
    return (await session.execute(_RESULT_LINES_SQL, params)).all()


async def read_result_records(
    session: AsyncSession, batch_id: uuid.UUID, *, after_position: int, limit: int
) -> Sequence[Any]:
    """Up to `limit` tasks after `after_position` as (batch_position, line) rows, each line
    one CSV record of `CSV_COLUMNS`."""
    params = {"batch_id": batch_id, "after": after_position, "limit": limit}
    return (await session.execute(_RESULT_CSV_SQL, params)).all()


# Small batches, rows another session holds skipped, as for tasks' keys.
_EXPIRE_KEYS_SQL = text(
    """
    UPDATE batches SET idempotency_key = NULL
    WHERE id IN (SELECT id FROM batches
                 WHERE idempotency_key IS NOT NULL
                   AND created_at < now() - make_interval(secs => :older_than_s)
                 LIMIT :limit FOR UPDATE SKIP LOCKED)
    """
).bindparams(bindparam("older_than_s", type_=Float))

_COUNT_EXPIRED_KEYS_SQL = text(
    "SELECT count(*) FROM batches WHERE idempotency_key IS NOT NULL"
    " AND created_at < now() - make_interval(secs => :older_than_s)"
).bindparams(bindparam("older_than_s", type_=Float))


async def count_expired_idempotency_keys(session: AsyncSession, older_than_s: float) -> int:
    result = await session.execute(_COUNT_EXPIRED_KEYS_SQL, {"older_than_s": older_than_s})
    return int(result.scalar_one())


async def expire_idempotency_keys(session: AsyncSession, older_than_s: float, limit: int) -> int:
    """Clear up to `limit` idempotency keys of batches created over `older_than_s` ago:
    the same key may then make a new batch."""
    params = {"older_than_s": older_than_s, "limit": limit}
    result = await session.execute(_EXPIRE_KEYS_SQL, params)
    return int(getattr(result, "rowcount", 0) or 0)
