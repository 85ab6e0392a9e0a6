"""Task use cases: each writes its business rows and their outbox row, then commits once.

Every write is one statement in `single_statement` (or several in `session.begin()`) at the
write itself; reads run in a short block of their own, so no connection is held while Redis,
a resolver or a lock answers, and no block starts inside another's transaction.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncSession

from api_service import callback_vetting, idempotency
from api_service.domains import normalise_domain
from api_service.ownership import read_owned
from api_service.schemas import TaskCreate
from shared import create_rate, keys, metrics, safeguards, wakeups
from shared.db import tasks
from shared.db.engine import single_statement
from shared.db.models import Batch, Task, TaskStatus, User
from shared.errors import (
    InvalidInput,
    InvalidState,
    NotFound,
    ScanOutboxError,
)
from shared.logging import get_logger
from shared.messages import OutboxEntry, scan_entry
from shared.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class Dispatch:
    """What a use case that commits scan messages works with: the session of its writes,
    Redis (the create budget, locks, markers), the settings, the request id its messages
    carry, and the hints that wake the relays once it has committed."""

    session: AsyncSession
    redis: aioredis.Redis
    settings: Settings
    hints: wakeups.Hints
    request_id: str | None


async def _mark_and_log(
    dispatch: Dispatch, event: str, task: Task, entry: OutboxEntry, **fields: object
) -> None:
    """After the commit of `task`'s new message: the secondary `task_created` marker (unless
    off), then `event` logged with the task and message ids and whether the marker was set."""
    settings = dispatch.settings
    marked = settings.redis_safeguards and await safeguards.set_created_marker(
        dispatch.redis, task.id, settings.marker_ttl_s
    )
    log.info(event, task_id=str(task.id), message_id=str(entry.message_id), marked=marked, **fields)


def request_fingerprint(
    target_domain: str, config: dict[str, object], callback_url: str | None = None
) -> str:
    """Identifies a create request's meaning, to tell a retry from a different request."""
    meaning: dict[str, object] = {"target_domain": target_domain, "config": config}
    if callback_url is not None:
        meaning["callback_url"] = callback_url
    canonical = json.dumps(meaning, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def checked_callback(user: User, url: str | None, settings: Settings) -> str | None:
    """The callback URL if the user may be called back there (InvalidInput naming
    `callback_url` otherwise); None without one."""
    if url is None:
        return None
    callback_vetting.check_callback_url(url, settings)
    if user.callback_secret is None:
        raise InvalidInput(
            "needs a signing secret first: POST /api/v1/callbacks/secret", field="callback_url"
        )
    return url


async def check_callback_host(url: str | None, settings: Settings) -> None:
    """The callback host's resolution check (`callback_vetting.check_resolves_publicly`). Run
    it between transactions: a slow resolver must not hold connections other requests and
    /readyz need."""
    if url is None:
        return
    await callback_vetting.check_resolves_publicly(url, settings)


@dataclass(frozen=True)
class Created:
    """A create's answer: the task, whether it is an earlier create replayed, and the rate
    limit left to the user (None when no limit applied)."""

    task: Task
    replayed: bool
    quota: create_rate.Quota | None


async def create_task(
    dispatch: Dispatch, user: User, body: TaskCreate, *, idempotency_key: str | None
) -> Created:
    """Commit a pending task with its outbox row, charged one create.

    With an idempotency key already used for the same request, the original task, uncharged;
    for a different request IdempotencyKeyReused, while it is in flight IdempotencyKeyInFlight.
    """
    settings = dispatch.settings
    domain = normalise_domain(body.target_domain)
    config = body.config.model_dump()
    if len(json.dumps(config)) > settings.max_config_bytes:
        raise InvalidInput(
            f"must be at most {settings.max_config_bytes} bytes as JSON", field="config"
        )
    callback_url = checked_callback(user, body.callback_url, settings)
    fingerprint = request_fingerprint(domain, config, callback_url)
    new = tasks.NewTask(
        user_id=user.id,
        target_domain=domain,
        config=config,
        max_attempts=settings.task_max_attempts,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        callback_url=callback_url,
    )
    if idempotency_key is None:
        return await _charge_and_insert(dispatch, new)
    async with idempotency.processing(dispatch.redis, settings, user.id, "task", idempotency_key):
        earlier = await idempotency.read_by_key(
            dispatch.session, tasks.get_task_by_idempotency_key, user.id, idempotency_key
        )
        if earlier is not None:
            idempotency.check_same_request(earlier.request_hash, fingerprint)
            quota = await create_rate.take(dispatch.redis, settings, user.id, cost=0)
            return Created(earlier, True, quota)
        return await _charge_and_insert(dispatch, new)


async def _charge_and_insert(dispatch: Dispatch, new: tasks.NewTask) -> Created:
    quota = await create_rate.take(dispatch.redis, dispatch.settings, new.user_id, cost=1)
    await check_callback_host(new.callback_url, dispatch.settings)
    task, created = await _insert_task(dispatch, new)
    return Created(task, not created, quota)


async def _insert_task(dispatch: Dispatch, new: tasks.NewTask) -> tuple[Task, bool]:
    session = dispatch.session
    task_id = uuid.uuid4()
    entry = scan_entry(task_id, dispatch.settings.queue_name, dispatch.request_id)
    # The task and its outbox row: one statement (shared/db/tasks.py, `_CREATE_TASK`).
    async with single_statement(session):
        task = await tasks.insert_task_with_message(session, task_id, new, entry)
    if task is None:
        existing = await idempotency.turned_away_by(
            session, tasks.get_task_by_idempotency_key, new.user_id, new.idempotency_key
        )
        idempotency.check_same_request(existing.request_hash, new.request_hash or "")
        return existing, False
    metrics.TASKS_CREATED.inc()
    await _mark_and_log(dispatch, "task created and marked", task, entry)
    return task, True


@dataclass(frozen=True)
class Actor:
    """Who acts on a task: its owner through the API, or an administrator through the
    dashboard, who may act on anyone's task and is logged as such."""

    user_id: int
    administrator: bool = False

    @classmethod
    def owner(cls, user: User) -> Actor:
        return cls(user.id)

    @classmethod
    def admin(cls, user: User) -> Actor:
        if not user.is_admin:
            raise ValueError("only an administrator acts on other users' tasks")
        return cls(user.id, administrator=True)

    @property
    def owner_id(self) -> int | None:
        """The owner the statement must match; None for an administrator."""
        return None if self.administrator else self.user_id

    def describe(self) -> str:
        return f"{'admin' if self.administrator else 'user'}:{self.user_id}"


async def _visible_task(session: AsyncSession, actor: Actor, task_id: uuid.UUID) -> Task | None:
    if actor.administrator:
        return await tasks.get_task(session, task_id)
    return await tasks.get_user_task(session, actor.user_id, task_id)


async def _refusal(
    session: AsyncSession, actor: Actor, task_id: uuid.UUID, action: str, allowed: str
) -> ScanOutboxError:
    """404 for a task the actor cannot see; 409 naming the state that forbids `action`."""
    async with single_statement(session):
        current = await _visible_task(session, actor, task_id)
    if current is None:
        return NotFound("no such task", field="task_id")
    return InvalidState(
        f"a {current.status} task cannot be {action}; only {allowed} tasks can",
        current_status=current.status,
    )


async def retry_task(dispatch: Dispatch, actor: Actor, task_id: uuid.UUID) -> Task:
    """failed|cancelled -> pending with attempts reset, committed with its new outbox row."""
    session, settings = dispatch.session, dispatch.settings
    entry = scan_entry(task_id, settings.queue_name, dispatch.request_id)
    async with safeguards.optional_lock(dispatch.redis, keys.task_lock(task_id), settings):
        # The task and its new outbox row: one statement (shared/db/tasks.py, `_RETRY_TASK`).
        async with single_statement(session):
            task = await tasks.retry_task(session, actor.owner_id, task_id, entry)
        if task is None:
            raise await _refusal(session, actor, task_id, "retried", "failed or cancelled")
        await _mark_and_log(dispatch, "task_retried", task, entry, actor=actor.describe())
    return task


async def announce_end(hints: wakeups.Hints, task: Task) -> None:
    """The finish hint for `task`, ended by a committed write of this process (and the
    callbacks hint when that write may have queued a delivery)."""
    may_call_back = task.callback_url is not None or task.batch_id is not None
    await hints.finished([(task.id, task.batch_id)], callbacks=may_call_back)


async def cancel_task(session: AsyncSession, actor: Actor, task_id: uuid.UUID) -> Task:
    """Any non-terminal state -> cancelled; a running scan stops at its next lease renewal."""
    async with single_statement(session):
        task = await tasks.cancel_task(session, actor.owner_id, task_id)
    if task is None:
        raise await _refusal(session, actor, task_id, "cancelled", "pending, queued or running")
    log.info("task_cancelled", task_id=str(task.id), actor=actor.describe())
    return task


async def get_task(session: AsyncSession, user: User, task_id: uuid.UUID) -> Task:
    """The user's own task; another user's task is indistinguishable from a missing one."""
    return await read_owned(session, tasks.get_user_task, user.id, task_id, kind="task")


def encode_cursor(row: Task | Batch) -> str:
    """The keyset position (created_at, id) of a row of a newest-first list."""
    raw = f"{row.created_at.isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, _, task_id = base64.urlsafe_b64decode(padded).decode().partition("|")
        return datetime.fromisoformat(created), uuid.UUID(task_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInput("is not a cursor returned by this API", field="cursor") from exc


async def list_tasks(
    session: AsyncSession,
    user: User,
    *,
    limit: int,
    status: TaskStatus | None,
    cursor: str | None,
    batch_id: uuid.UUID | None = None,
) -> tuple[Sequence[Task], str | None]:
    """One page, newest first, and the cursor of the next page if there is one."""
    before = decode_cursor(cursor) if cursor else None
    async with single_statement(session):
        rows = await tasks.list_user_tasks(
            session,
            user.id,
            limit=limit + 1,
            status=status.value if status else None,
            batch_id=batch_id,
            before=before,
        )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > limit else None
    return page, next_cursor
