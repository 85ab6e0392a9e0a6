"""Batch use cases: submit many domains in one transaction, and read a batch's progress."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from api_service import idempotency, task_service
from api_service.domains import normalise_domain
from api_service.ownership import read_owned
from api_service.schemas import BatchCreate
from shared import create_rate, metrics, safeguards
from shared.db import batches, tasks
from shared.db.engine import single_statement
from shared.db.models import TERMINAL_STATUSES, Batch, Task, User
from shared.errors import InvalidEntries, InvalidInput, NotFound
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
    callback_url = task_service.checked_callback(user, body.callback_url, settings)
    unique = list(dict.fromkeys(domains))
    meaning: dict[str, object] = {"domains": unique, "config": config}
    if callback_url is not None:
        meaning["callback_url"] = callback_url
    canonical = json.dumps(meaning, sort_keys=True)
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
    return BatchRequest(unique, config, fingerprint, callback_url)


@dataclass(frozen=True)
class CreatedBatch:
    """A batch create's answer: the batch id, whether it is an earlier create replayed, and
    the rate limit left to the user (None when no limit applied)."""

    id: uuid.UUID
    replayed: bool
    quota: create_rate.Quota | None


async def create_batch(
    dispatch: task_service.Dispatch,
    user: User,
    request: BatchRequest,
    *,
    idempotency_key: str | None,
) -> CreatedBatch:
    """Commit the batch, its tasks and their outbox rows together, charged one create per task.

    A repeated request with the same idempotency key returns the first batch, uncharged; one
    with another body is IdempotencyKeyReused, one while the first is in flight
    IdempotencyKeyInFlight. The callback host is resolved only once the request is charged.
    """
    settings = dispatch.settings
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
            scan_entry(uuid.uuid4(), settings.queue_name, dispatch.request_id)
            for _ in request.domains
        ],
    )
    if idempotency_key is None:
        return await _charge_and_insert(dispatch, new)
    async with idempotency.processing(dispatch.redis, settings, user.id, "batch", idempotency_key):
        earlier = await idempotency.read_by_key(
            dispatch.session, batches.get_batch_by_idempotency_key, user.id, idempotency_key
        )
        if earlier is not None:
            idempotency.check_same_request(earlier.request_hash, request.fingerprint)
            quota = await create_rate.take(dispatch.redis, settings, user.id, cost=0)
            return CreatedBatch(earlier.id, True, quota)
        return await _charge_and_insert(dispatch, new)


async def _charge_and_insert(
    dispatch: task_service.Dispatch, new: batches.NewBatch
) -> CreatedBatch:
    cost = len(new.domains)
    quota = await create_rate.take(dispatch.redis, dispatch.settings, new.user_id, cost=cost)
    await task_service.check_callback_host(new.callback_url, dispatch.settings)
    batch_id, created = await _insert(dispatch, new)
    return CreatedBatch(batch_id, not created, quota)


async def _insert(dispatch: task_service.Dispatch, new: batches.NewBatch) -> tuple[uuid.UUID, bool]:
    session, settings = dispatch.session, dispatch.settings
    # The batch, its tasks and their outbox rows: one statement (shared/db/batches.py).
    async with single_statement(session):
        inserted = await batches.insert_batch(session, new)
    if not inserted:
        earlier = await idempotency.turned_away_by(
            session, batches.get_batch_by_idempotency_key, new.user_id, new.idempotency_key
        )
        idempotency.check_same_request(earlier.request_hash, new.request_hash)
        return earlier.id, False
    metrics.TASKS_CREATED.inc(len(new.entries))
    task_ids = [entry.task_id for entry in new.entries if entry.task_id is not None]
    marked = settings.redis_safeguards and await safeguards.set_created_markers(
        dispatch.redis, task_ids, settings.marker_ttl_s
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
    async with session.begin():
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


@dataclass(frozen=True)
class BatchSummary:
    batch: Batch
    progress: batches.BatchProgress


async def list_batches(
    session: AsyncSession, user: User, *, limit: int, cursor: str | None
) -> tuple[list[BatchSummary], str | None]:
    """One page of the user's batches, newest first, with their counts; and the next cursor."""
    before = task_service.decode_cursor(cursor) if cursor else None
    async with session.begin():
        rows = await batches.list_user_batches(session, user.id, limit=limit + 1, before=before)
        page = rows[:limit]
        progress = await batches.get_batches_progress(
            session, [batch.id for batch in page], TERMINAL
        )
    next_cursor = task_service.encode_cursor(page[-1]) if len(rows) > limit else None
    return [BatchSummary(batch, progress[batch.id]) for batch in page], next_cursor


async def cancel_batch(session: AsyncSession, user: User, batch_id: uuid.UUID) -> int:
    """Cancel every task of the user's batch that has not ended; returns how many were.
    Another user's batch is 404; a batch already over cancels nothing."""
    async with session.begin():
        batch = await batches.get_user_batch(session, user.id, batch_id)
        if batch is None:
            raise NotFound("no such batch", field="batch_id")
        cancelled = await tasks.cancel_batch_tasks(session, user.id, batch_id)
    log.info("batch_cancelled", batch_id=str(batch_id), tasks=cancelled, actor=f"user:{user.id}")
    return cancelled


async def get_user_batch(session: AsyncSession, user: User, batch_id: uuid.UUID) -> Batch:
    """The user's batch; another user's is 404 like a missing one."""
    return await read_owned(session, batches.get_user_batch, user.id, batch_id, kind="batch")
