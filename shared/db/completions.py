"""The final writes of many tasks in one statement, each fenced by its own lease token.

A worker's runs end together by the dozen under load; writing each end on its own costs a
statement and a connection checkout per task. Here one UPDATE ends them all, and a row changes
only where its token is still the current lease of a running task, exactly as
`claims.finish_task` does for one: a stale worker's entry in the batch changes nothing while
the others land.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

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


# text(): arrays unnested into rows join the tasks they end, which reads plainer than the
# Core equivalent. The WHERE clause is the fence of `claims.finish_task`, row by row.
# `result` travels as text (NULL stays SQL NULL, not the JSON value null). Each end fires
# the deliveries trigger `task_finished_callbacks` (docs/design.md "Completion callbacks").
_FINISH_MANY = text(
    """
    UPDATE tasks AS t
    SET status = f.status,
        result = f.result::jsonb,
        error = f.error,
        finished_at = now(),
        updated_at = now(),
        lease_owner = NULL,
        lease_token = NULL,
        lease_expires_at = NULL
    FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[]), CAST(:statuses AS text[]),
                CAST(:results AS text[]), CAST(:errors AS text[]))
         AS f(id, token, status, result, error)
    WHERE t.id = f.id AND t.status = 'running' AND t.lease_token = f.token
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
    rows = await session.execute(_FINISH_MANY, params)
    return {row[0] for row in rows}
