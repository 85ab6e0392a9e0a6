"""Batch use cases: submit many domains in one transaction, and read a batch's progress."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession

from api_service import ratelimit, services
from api_service.domains import normalise_domain
from api_service.schemas import BatchCreate
from shared import keys, metrics, safeguards
from shared.db import batches
from shared.db.models import TERMINAL_STATUSES, Batch, Task, User
from shared.errors import Conflict, InvalidEntries, InvalidInput, NotFound
from shared.logging import get_logger
from shared.messages import scan_entry
from shared.settings import Settings

log = get_logger(__name__)

TERMINAL = frozenset(status.value for status in TERMINAL_STATUSES)


@dataclass(frozen=True)
class BatchRequest:
    """A validated batch: unique normalised domains in submission order, and the config."""

    domains: list[str]
    config: dict[str, object]
    fingerprint: str
    callback_url: str | None = None


def validate_batch(body: BatchCreate, settings: Settings, user: User) -> BatchRequest:
    """Normalise every domain and name each bad one by index; duplicates become one task."""
    if len(body.tasks) > settings.batch_max_tasks:
        raise InvalidInput(
            f"a batch may hold at most {settings.batch_max_tasks} domains, "
            f"this one has {len(body.tasks)}",
            field="tasks",
        )
    domains: list[str] = []
    errors: list[dict[str, object]] = []
    for index, entry in enumerate(body.tasks):
        try:
            domains.append(normalise_domain(entry.target_domain))
        except InvalidInput as exc:
            errors.append(
                {"index": index, "field": exc.field or "target_domain", "reason": exc.message}
            )
    if errors:
        raise InvalidEntries(
            f"{len(errors)} of {len(body.tasks)} entries are invalid; nothing was created",
            field="tasks",
            errors=errors,
        )
    config = body.config.model_dump()
    if len(json.dumps(config)) > settings.max_config_bytes:
        raise InvalidInput(
            f"must be at most {settings.max_config_bytes} bytes as JSON", field="config"
        )
    callback_url = services.checked_callback(user, body.callback_url, settings)
    unique = list(dict.fromkeys(domains))
    meaning: dict[str, object] = {"domains": unique, "config": config}
    if callback_url is not None:
        meaning["callback_url"] = callback_url
    canonical = json.dumps(meaning, sort_keys=True)
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
    return BatchRequest(unique, config, fingerprint, callback_url)


def _replayed(existing: Batch | None, request: BatchRequest) -> Batch | None:
    """The earlier batch for a repeated request; Conflict when the key meant another."""
    if existing is not None and existing.request_hash != request.fingerprint:
        raise Conflict(
            "this Idempotency-Key was already used for a different request",
            field="Idempotency-Key",
        )
    return existing


async def create_batch(
    session: AsyncSession,
    redis: aioredis.Redis,
    settings: Settings,
    user: User,
    request: BatchRequest,
    *,
    idempotency_key: str | None,
    request_id: str | None,
) -> tuple[uuid.UUID, bool]:
    """Commit the batch, its tasks and their outbox rows together; returns (id, created).

    A repeated request with the same idempotency key returns the first batch, uncharged.
    The callback host is resolved only once the rate limit has charged the request.
    """
    if idempotency_key is None:
        await ratelimit.take(redis, settings, user.id, cost=len(request.domains))
        await services.check_callback_host(session, request.callback_url, settings)
        return await _insert(session, redis, settings, user, request, None, request_id)
    lock = keys.create_lock(user.id, f"batch:{idempotency_key}")
    if settings.redis_safeguards and session.in_transaction():
        await session.rollback()  # no connection held while waiting for the lock
    async with safeguards.optional_lock(redis, lock, settings):
        async with services.transaction(session):
            earlier = await batches.get_batch_by_idempotency_key(session, user.id, idempotency_key)
        if (replay := _replayed(earlier, request)) is not None:
            return replay.id, False
        await ratelimit.take(redis, settings, user.id, cost=len(request.domains))
        await services.check_callback_host(session, request.callback_url, settings)
        return await _insert(session, redis, settings, user, request, idempotency_key, request_id)


async def _insert(
    session: AsyncSession,
    redis: aioredis.Redis,
    settings: Settings,
    user: User,
    request: BatchRequest,
    idempotency_key: str | None,
    request_id: str | None,
) -> tuple[uuid.UUID, bool]:
    new = batches.NewBatch(
        id=uuid.uuid4(),
        user_id=user.id,
        config=request.config,
        max_attempts=settings.task_max_attempts,
        request_hash=request.fingerprint,
        idempotency_key=idempotency_key,
        domains=request.domains,
        callback_url=request.callback_url,
        entries=[
            scan_entry(uuid.uuid4(), settings.queue_name, request_id) for _ in request.domains
        ],
    )
    earlier: Batch | None = None
    async with services.transaction(session):
        inserted = await batches.insert_batch(session, new)
        if not inserted and idempotency_key is not None:
            earlier = await batches.get_batch_by_idempotency_key(session, user.id, idempotency_key)
    if not inserted:
        replay = _replayed(earlier, request)
        if replay is None:
            raise Conflict("this Idempotency-Key is being used", field="Idempotency-Key")
        return replay.id, False
    metrics.TASKS_CREATED.inc(len(new.entries))
    task_ids = [entry.task_id for entry in new.entries if entry.task_id is not None]
    marked = settings.redis_safeguards and await safeguards.set_created_markers(
        redis, task_ids, settings.marker_ttl_s
    )
    log.info("batch created", batch_id=str(new.id), tasks=len(task_ids), marked=marked)
    return new.id, True


@dataclass(frozen=True)
class BatchView:
    batch: Batch
    progress: batches.BatchProgress
    tasks: Sequence[Task]
    next_cursor: str | None

    @property
    def done(self) -> bool:
        return self.progress.finished_at is not None


def encode_position(position: int) -> str:
    return base64.urlsafe_b64encode(str(position).encode()).decode().rstrip("=")


def decode_position(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = int(base64.urlsafe_b64decode(padded).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInput("is not a cursor returned by this API", field="cursor") from exc
    if position < 0:
        raise InvalidInput("is not a cursor returned by this API", field="cursor")
    return position


async def read_batch(
    session: AsyncSession, user: User, batch_id: uuid.UUID, *, limit: int, cursor: str | None
) -> BatchView:
    """The user's batch with its counts and one page of tasks; another user's is 404."""
    after = decode_position(cursor) if cursor else -1
    async with services.transaction(session):
        batch = await batches.get_user_batch(session, user.id, batch_id)
        if batch is None:
            raise NotFound("no such batch", field="batch_id")
        progress = await batches.get_batch_progress(session, batch.id, TERMINAL)
        rows = await batches.list_batch_tasks(
            session, batch.id, after_position=after, limit=limit + 1
        )
    page = rows[:limit]
    last = page[-1].batch_position if page else None
    next_cursor = encode_position(last) if len(rows) > limit and last is not None else None
    return BatchView(batch, progress, page, next_cursor)
