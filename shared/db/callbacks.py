"""Statements for completion callbacks: signing secrets and the deliveries outbox the relays
drain (a task is created with its callback URL by `tasks.insert_task_with_message`). None of
them commits.

Idiom: `text()` built once at import for the deliveries outbox (the bounded claim, burying,
gauges, pruning); expression language for the signing secrets.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import User

# --- secrets -----------------------------------------------------------------


async def rotate_secret(
    session: AsyncSession, user_id: int, secret: str, keep_previous: bool
) -> bool:
    """`secret` becomes current; the current one becomes previous (both sign until the
    next rotation) or, without `keep_previous`, stops signing. False for an unknown user."""
    previous = User.callback_secret if keep_previous else None
    stmt = (
        update(User)
        .where(User.id == user_id)
        .values(callback_secret=secret, callback_secret_previous=previous)
        .returning(User.id)
    )
    return (await session.execute(stmt)).first() is not None


# --- deliveries --------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedDelivery:
    id: int
    delivery_id: uuid.UUID
    user_id: int
    host: str  # the receiver's host as the claim bounds it (lower case, no port)
    url: str
    payload: dict[str, Any]
    attempts: int  # including the one just claimed
    secrets: tuple[str, ...]  # current first; empty if the user has none any more


@dataclass(frozen=True)
class InFlight:
    """What one relay has in flight, and its bounds per user and per receiver host."""

    per_user: int
    per_host: int
    users: Mapping[int, int] = field(default_factory=dict)
    hosts: Mapping[str, int] = field(default_factory=dict)


# The receiver's host from the URL, lower-cased, without userinfo or port; '' if none. The
# claim returns it, so the relay counts in flight by the very key the claim bounds.
_HOST_PATTERN = r"^[^:/?#]+://(?:[^@/?#]*@)?(\[[^]]*\]|[^:/?#]*)"
_HOST = f"coalesce(lower(substring(d.url FROM '{_HOST_PATTERN}')), '')"

# Claimed rows are leased, not locked: the claim pushes available_at past the POST's
# longest time and commits, so no transaction stays open across HTTP calls, and a relay
# that dies mid-POST leaves the row due again when the lease runs out (at least once).
# A row whose tries are spent is never leased again (`bury_exhausted` makes it dead).
# Users and hosts at their bound are skipped while scanning, so a client's backlog behind
# a stalled receiver costs index reads, never slots; of the rows scanned (a few times
# `limit`, locked until commit), each user and host gets at most its free slots.
_CLAIM_SQL = text(
    f"""
    WITH busy_users AS (
        SELECT * FROM unnest(CAST(:user_ids AS bigint[]), CAST(:user_counts AS integer[]))
            AS b(user_id, in_flight)
    ), busy_hosts AS (
        SELECT * FROM unnest(CAST(:hosts AS text[]), CAST(:host_counts AS integer[]))
            AS b(host, in_flight)
    ), candidates AS (
        SELECT d.id, d.user_id, d.available_at, h.host
        FROM deliveries d, LATERAL (SELECT {_HOST} AS host) h
        WHERE d.delivered_at IS NULL AND d.dead_at IS NULL AND d.available_at <= now()
          AND d.attempts < :max_attempts
          AND d.user_id NOT IN (SELECT user_id FROM busy_users WHERE in_flight >= :per_user)
          AND h.host NOT IN (SELECT host FROM busy_hosts WHERE in_flight >= :per_host)
        ORDER BY d.available_at, d.id
        LIMIT :scan_limit
        FOR UPDATE OF d SKIP LOCKED
    ), ranked AS (
        SELECT c.id, c.host, c.available_at,
               row_number() OVER (PARTITION BY c.user_id ORDER BY c.available_at, c.id)
                 + coalesce(bu.in_flight, 0) AS user_slot,
               row_number() OVER (PARTITION BY c.host ORDER BY c.available_at, c.id)
                 + coalesce(bh.in_flight, 0) AS host_slot
        FROM candidates c
        LEFT JOIN busy_users bu ON bu.user_id = c.user_id
        LEFT JOIN busy_hosts bh ON bh.host = c.host
    ), due AS (
        SELECT id, host FROM ranked
        WHERE user_slot <= :per_user AND host_slot <= :per_host
        ORDER BY available_at, id
        LIMIT :limit
    )
    UPDATE deliveries d
    SET attempts = d.attempts + 1, available_at = now() + make_interval(secs => :lease_s)
    FROM due, users u
    WHERE d.id = due.id AND u.id = d.user_id
    RETURNING d.id, d.delivery_id, d.user_id, due.host, d.url, d.payload, d.attempts,
              u.callback_secret, u.callback_secret_previous
    """
)
# Rows scanned per row wanted: room for users and hosts that reach their bound mid-scan.
SCAN_FACTOR = 4


async def claim_due(
    session: AsyncSession, limit: int, lease_s: float, max_attempts: int, in_flight: InFlight
) -> list[ClaimedDelivery]:
    """Lease up to `limit` due deliveries with tries left, oldest first, counting the
    attempt; with those `in_flight`, no user or host gets more than its bound."""
    params = {
        "limit": limit,
        "scan_limit": limit * SCAN_FACTOR,
        "lease_s": lease_s,
        "max_attempts": max_attempts,
        "per_user": in_flight.per_user,
        "per_host": in_flight.per_host,
        "user_ids": list(in_flight.users),
        "user_counts": list(in_flight.users.values()),
        "hosts": list(in_flight.hosts),
        "host_counts": list(in_flight.hosts.values()),
    }
    rows = (await session.execute(_CLAIM_SQL, params)).all()
    return [
        ClaimedDelivery(
            id=row.id,
            delivery_id=row.delivery_id,
            user_id=row.user_id,
            host=row.host,
            url=row.url,
            payload=row.payload,
            attempts=row.attempts,
            secrets=tuple(s for s in (row.callback_secret, row.callback_secret_previous) if s),
        )
        for row in rows
    ]


# Due rows whose tries are spent: the relay of the last try stopped before recording its
# outcome (a crash, or a kill for memory), and its lease ran out.
_BURY_SQL = text(
    """
    UPDATE deliveries
    SET dead_at = now(),
        last_error = 'out of attempts: try ' || attempts || ' recorded no outcome'
    WHERE id IN (
        SELECT id FROM deliveries
        WHERE delivered_at IS NULL AND dead_at IS NULL AND available_at <= now()
          AND attempts >= :max_attempts
        FOR UPDATE SKIP LOCKED
    )
    RETURNING delivery_id, attempts
    """
)


async def bury_exhausted(session: AsyncSession, max_attempts: int) -> list[tuple[uuid.UUID, int]]:
    """Make dead the due deliveries with `max_attempts` tries spent; (delivery id, tries)."""
    rows = (await session.execute(_BURY_SQL, {"max_attempts": max_attempts})).all()
    return [(row.delivery_id, row.attempts) for row in rows]


@dataclass(frozen=True)
class DeliverySummary:
    pending: int
    oldest_pending_age_s: float
    dead: int


_SUMMARY_SQL = text(
    """
    SELECT
      (SELECT count(*) FROM deliveries WHERE delivered_at IS NULL AND dead_at IS NULL),
      (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM deliveries
       WHERE delivered_at IS NULL AND dead_at IS NULL),
      (SELECT count(*) FROM deliveries WHERE dead_at IS NOT NULL)
    """
)


async def summarize(session: AsyncSession) -> DeliverySummary:
    """Pending deliveries, the age of the oldest, and dead ones (partial indexes only)."""
    pending, age_s, dead = (await session.execute(_SUMMARY_SQL)).one()
    return DeliverySummary(int(pending), float(age_s), int(dead))


_PRUNE_SQL = text(
    """
    DELETE FROM deliveries WHERE id IN (
        SELECT id FROM deliveries
        WHERE delivered_at < now() - make_interval(secs => :retention_s)
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    """
)


async def prune_delivered(session: AsyncSession, retention_s: float, limit: int) -> int:
    """Delete up to `limit` deliveries delivered longer than `retention_s` ago; dead and
    pending ones are kept."""
    result = await session.execute(_PRUNE_SQL, {"retention_s": retention_s, "limit": limit})
    return int(getattr(result, "rowcount", 0) or 0)
