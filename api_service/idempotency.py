"""The `Idempotency-Key` request header, as the IETF httpapi draft defines it, for creates.

A key names one create of its user. The first request with it creates; a repeat with the same
meaning gets the first answer again (its 201 and the body as it was then, marked
`Idempotent-Replayed: true`) and is not charged to the rate limit; a repeat with another
meaning is 422; a repeat while the first is still being processed is 409 with `Retry-After`.
"Still being processed" is known from a short Redis key held for the create, a safeguard
like the others: without Redis a concurrent repeat waits on the database's unique index of
(user, key) instead, which decides in every case, and then gets the replay.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, TypeVar

import redis.asyncio as aioredis
from fastapi import Header
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from shared import keys, metrics
from shared.db.engine import single_statement
from shared.errors import IdempotencyKeyInFlight, IdempotencyKeyReused, InvalidInput
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")

# The header as a create route declares it; the route checks it with `checked_key`.
KeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="Makes the create safe to retry (IETF draft): a repeat with the same body "
        "gets the first answer again, uncharged; another body is 422; a repeat while the first "
        "is still being processed is 409. Kept `SCAN_IDEMPOTENCY_RETENTION_S` (a day).",
    ),
]


def checked_key(value: str | None) -> str | None:
    """The header's value, or InvalidInput naming it when it is not 1-255 visible ASCII."""
    if value is not None and not _KEY.match(value):
        raise InvalidInput("must be 1 to 255 visible ASCII characters", field=HEADER)
    return value


def check_same_request(stored_fingerprint: str | None, fingerprint: str) -> None:
    """IdempotencyKeyReused unless the earlier request with the key meant the same."""
    if stored_fingerprint != fingerprint:
        raise IdempotencyKeyReused()


@asynccontextmanager
async def processing(
    redis: aioredis.Redis, settings: Settings, user_id: int, scope: str, key: str
) -> AsyncIterator[None]:
    """Mark the key as being processed for the block; IdempotencyKeyInFlight when another
    request holds it. Redis failing (logged, counted) or off lets the block run unmarked."""
    if not settings.redis_safeguards:
        yield
        return
    name = keys.create_lock(user_id, f"{scope}:{key}")
    lock = redis.lock(name, timeout=settings.lock_timeout_s, blocking=False)
    try:
        acquired = bool(await lock.acquire())
    except (RedisError, OSError) as exc:
        metrics.SAFEGUARD_FAILURES.labels(safeguard="lock").inc()
        log.warning("safeguard_lock_failed", lock=name, error=type(exc).__name__)
        yield
        return
    if not acquired:
        raise IdempotencyKeyInFlight()
    try:
        yield
    finally:
        try:
            await lock.release()
        except (RedisError, OSError) as exc:
            # Expired or unreachable: the key expires by itself after `lock_timeout_s`.
            metrics.SAFEGUARD_FAILURES.labels(safeguard="lock").inc()
            log.warning("safeguard_lock_release_failed", lock=name, error=type(exc).__name__)


R = TypeVar("R")
# A statement reading the user's create (a task, a batch) that holds a key, None if none does.
ReadByKey = Callable[[AsyncSession, int, str], Awaitable[R | None]]


async def read_by_key(
    session: AsyncSession, read: ReadByKey[R], user_id: int, key: str
) -> R | None:
    """The user's create that holds `key`, read in a statement of its own."""
    async with single_statement(session):
        return await read(session, user_id, key)


async def turned_away_by(
    session: AsyncSession, read: ReadByKey[R], user_id: int, key: str | None
) -> R:
    """After an insert that wrote nothing: the create holding its key, IdempotencyKeyInFlight
    if none does. The unique index made the insert wait for that concurrent create, which is
    committed by now: a statement of its own sees it."""
    earlier = None if key is None else await read_by_key(session, read, user_id, key)
    if earlier is None:
        raise IdempotencyKeyInFlight()
    return earlier
