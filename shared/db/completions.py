"""A run's end, the final write of 1..N tasks in one statement, each fenced by its own lease
token.

A worker's runs end together by the dozen under load; writing each end on its own costs a
statement and a connection checkout per task. One UPDATE ends them all, and a row changes only
where its token is still the current lease of a running task: a stale worker's entry in the
batch changes nothing while the others land. An end written alone is the same statement with
one entry.

Idiom: `text()` built once at import, over arrays of ids, tokens and outcomes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import predicates
from shared.db.models import TaskStatus


@dataclass(frozen=True)
class Completion:
    """One run's end: the task, the lease token it ran under, and what to write."""

    task_id: uuid.UUID
    lease_token: uuid.UUID
    status: TaskStatus
    result: dict[str, Any] | None
    error: str | None
    # For the finish hint sent once the end is committed (shared/wakeups.py).
    batch_id: uuid.UUID | None = None
    may_call_back: bool = False


# Arrays unnested into rows join the tasks they end. Only the holder of the current lease, while
# the task is still running, may write. `result` travels as text (NULL stays SQL NULL, not the
# JSON value null). Each end fires the deliveries trigger `task_finished_callbacks`
# (docs/design.md "Completion callbacks"): the task's callback rows are written in the same
# transaction.
_FINISH_TASKS = text(
    f"""
    UPDATE tasks AS t
    SET status = f.status,
        result = f.result::jsonb,
        error = f.error,
        finished_at = now(),
        updated_at = now(),
        {predicates.LEASE_CLEARED}
    FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[]), CAST(:statuses AS text[]),
                CAST(:results AS text[]), CAST(:errors AS text[]))
         AS f(id, token, status, result, error)
    WHERE t.id = f.id AND t.status = {predicates.RUNNING} AND t.lease_token = f.token
    RETURNING t.id
    """
)


async def finish_tasks(session: AsyncSession, completions: Sequence[Completion]) -> set[uuid.UUID]:
    """running -> each completion's terminal state, only where its token holds the current
    lease; the ids of the tasks whose end was written (the others are no longer theirs)."""
    if not completions:
        return set()
    # Sorted, so concurrent batches tend to lock rows in one order; the trigger that locks a
    # batch's row can still deadlock two of them, which the caller survives by writing each
    # end on its own.
    ordered = sorted(completions, key=lambda completion: completion.task_id)
    params = {
        "ids": [c.task_id for c in ordered],
        "tokens": [c.lease_token for c in ordered],
        "statuses": [c.status.value for c in ordered],
        "results": [None if c.result is None else json.dumps(c.result) for c in ordered],
        "errors": [c.error for c in ordered],
    }
    rows = await session.execute(_FINISH_TASKS, params)
    return {row[0] for row in rows}
