"""The task predicates (and the lease-clearing SET) that more than one statement uses, each
written once, as SQL over
the columns of `tasks` (unqualified: use them where `tasks` is the only table in scope) and
built from `TaskStatus`, so no status is spelt as a string literal in a statement.

They are SQL text, interpolated into the `text()` statements of `claims`, `completions`,
`leases`, `recovery` and `outbox`.

Idiom: SQL fragments (strings) built once at import from `TaskStatus`.
"""

from __future__ import annotations

from shared.db.models import TERMINAL_STATUSES, TaskStatus


def sql(*statuses: TaskStatus) -> str:
    """`statuses` as a comma-separated list of SQL string literals (the enum's values are
    plain words, so they need no escaping)."""
    return ", ".join(f"'{status.value}'" for status in statuses)


PENDING = sql(TaskStatus.PENDING)
QUEUED = sql(TaskStatus.QUEUED)
RUNNING = sql(TaskStatus.RUNNING)
FAILED = sql(TaskStatus.FAILED)
CANCELLED = sql(TaskStatus.CANCELLED)

# Waiting for its message: a worker may still claim it as the message arrives.
WAITING = f"status IN ({sql(TaskStatus.PENDING, TaskStatus.QUEUED)})"

# Not yet succeeded, failed or cancelled.
NOT_ENDED = f"status IN ({sql(*(s for s in TaskStatus if s not in TERMINAL_STATUSES))})"

# Running under a live lease: a scan politeness counts against its target.
LEASE_LIVE = f"status = {RUNNING} AND lease_expires_at >= now()"

# Running under a lease that has expired: its worker died or stalled.
LEASE_EXPIRED = f"status = {RUNNING} AND lease_expires_at < now()"

# Waiting to run, or running under an expired lease. Taking over an expired lease is safe
# because every later write of the old holder is conditional on its token, which the
# takeover replaces.
CLAIMABLE = f"({WAITING} OR ({LEASE_EXPIRED}))"

# What every end of a run, every deferral and every re-dispatch writes about the lease.
LEASE_CLEARED = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
