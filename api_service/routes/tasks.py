"""/api/v1/tasks: submit scans, read their state, retry and cancel them."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response, status

from api_service import ratelimit, services, waiting
from api_service.deps import (
    CurrentUser,
    HintsDep,
    RedisDep,
    RequestIdDep,
    SessionDep,
    SettingsDep,
    WaitersDep,
    checked_wait_s,
)
from api_service.schemas import ErrorResponse, TaskCreate, TaskOut, TaskPage
from shared.db.models import TERMINAL_STATUSES, Task, TaskStatus
from shared.errors import InvalidInput

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 422, 503)
}


def checked_idempotency_key(value: str | None) -> str | None:
    if value is not None and not _IDEMPOTENCY_KEY.match(value):
        raise InvalidInput("must be 1 to 255 visible ASCII characters", field="Idempotency-Key")
    return value


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskOut,
    responses={
        200: {"model": TaskOut, "description": "Replay of an idempotent create"},
        **_ERRORS,
        429: {
            "model": ErrorResponse,
            "description": "Too many creates from this token; `Retry-After` says when to retry",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
    },
    dependencies=[Depends(ratelimit.limit_creates)],
)
async def create_task(
    body: TaskCreate,
    response: Response,
    user: CurrentUser,
    session: SessionDep,
    redis: RedisDep,
    hints: HintsDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> TaskOut:
    """Accept a scan: the task and the message that starts it are committed together."""
    task, created = await services.create_task(
        session,
        redis,
        settings,
        user,
        body,
        idempotency_key=checked_idempotency_key(idempotency_key),
        request_id=request_id,
    )
    if created:
        await hints.outbox()
    else:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/api/v1/tasks/{task.id}"
    return TaskOut.model_validate(task)


WaitQuery = Annotated[
    float,
    Query(
        ge=0,
        description="Seconds to wait for the end (at most `SCAN_WAIT_MAX_S`, 30): answered as "
        "soon as it ends, or with the current state when the wait is over. 0: at once.",
    ),
]


@router.get(
    "/{task_id}",
    response_model=TaskOut,
    responses={**_ERRORS, **waiting.CLIENT_SHARE_RESPONSES},
)
async def get_task(
    task_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    waiters: WaitersDep,
    wait: WaitQuery = 0,
) -> TaskOut:
    """The caller's task; with `wait`, once it has ended or the wait is over."""
    wait_s = checked_wait_s(wait, settings)

    async def read() -> Task:
        try:
            return await services.get_task(session, user, task_id)
        finally:
            # Between reads the request holds no database connection.
            await session.close()

    task = await waiting.wait_until(waiters, task_id, wait_s, read, _ended, client=user.id)
    return TaskOut.model_validate(task)


def _ended(task: Task) -> bool:
    return task.status in TERMINAL_STATUSES


@router.get("", response_model=TaskPage, responses=_ERRORS)
async def list_tasks(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    status_filter: Annotated[TaskStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> TaskPage:
    """The caller's tasks, newest first, one keyset page at a time."""
    page, next_cursor = await services.list_tasks(
        session,
        user,
        limit=min(limit, settings.page_size_max),
        status=status_filter,
        cursor=cursor,
    )
    return TaskPage(items=[TaskOut.model_validate(t) for t in page], next_cursor=next_cursor)


@router.post("/{task_id}/retry", response_model=TaskOut, responses=_ERRORS)
async def retry_task(
    task_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    redis: RedisDep,
    hints: HintsDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> TaskOut:
    """Run a failed or cancelled task again from a fresh start (attempts reset to 0)."""
    task = await services.retry_task(
        session, redis, settings, services.Actor.owner(user), task_id, request_id=request_id
    )
    await hints.outbox()
    return TaskOut.model_validate(task)


@router.post("/{task_id}/cancel", response_model=TaskOut, responses=_ERRORS)
async def cancel_task(
    task_id: uuid.UUID, user: CurrentUser, session: SessionDep, hints: HintsDep
) -> TaskOut:
    """Cancel a pending, queued or running task; a running scan stops without a result."""
    task = await services.cancel_task(session, services.Actor.owner(user), task_id)
    await services.announce_end(hints, task)
    return TaskOut.model_validate(task)
