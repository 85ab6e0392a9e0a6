"""/api/v1/tasks: submit scans, read their state, retry and cancel them."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from api_service import idempotency, paging, responses, task_service, waiting
from api_service.deps import (
    CurrentUser,
    DispatchDep,
    HintsDep,
    SessionDep,
    SettingsDep,
    WaitersDep,
    checked_wait_s,
)
from api_service.schemas import TaskCreate, TaskOut, TaskPage
from shared.db.models import TERMINAL_STATUSES, Task, TaskStatus

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskOut,
    responses=responses.idempotent_create(
        "Too many creates from this token; `Retry-After` says when to retry"
    ),
)
async def create_task(
    body: TaskCreate,
    response: Response,
    user: CurrentUser,
    dispatch: DispatchDep,
    idempotency_key: idempotency.KeyHeader = None,
) -> TaskOut:
    """Accept a scan: the task and the message that starts it are committed together."""
    key = idempotency.checked_key(idempotency_key)
    created = await task_service.create_task(dispatch, user, body, idempotency_key=key)
    location = f"/api/v1/tasks/{created.task.id}"
    responses.answer_create(response, location, created.quota, replayed=created.replayed)
    if created.replayed:
        return TaskOut.as_created(created.task)
    await dispatch.hints.outbox()
    return TaskOut.model_validate(created.task)


@router.get(
    "/{task_id}",
    response_model=TaskOut,
    responses={**responses.errors(401, 404, 422, 503), **waiting.CLIENT_SHARE_RESPONSES},
)
async def get_task(
    task_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    waiters: WaitersDep,
    wait: waiting.WaitQuery = 0,
) -> TaskOut:
    """The caller's task; with `wait`, once it has ended or the wait is over."""
    wait_s = checked_wait_s(wait, settings)

    async def read() -> Task:
        # A short read of its own: between reads the request holds no database connection.
        return await task_service.get_task(session, user, task_id)

    task = await waiting.wait_until(waiters, task_id, wait_s, read, _ended, client=user.id)
    return TaskOut.model_validate(task)


def _ended(task: Task) -> bool:
    return task.status in TERMINAL_STATUSES


@router.get("", response_model=TaskPage, responses=responses.errors(401, 422, 503))
async def list_tasks(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    status_filter: Annotated[TaskStatus | None, Query(alias="status")] = None,
    batch_id: Annotated[
        uuid.UUID | None, Query(description="Only the tasks of this batch of the caller's.")
    ] = None,
    limit: paging.LimitQuery = 20,
    cursor: paging.CursorQuery = None,
) -> TaskPage:
    """The caller's tasks with their results, newest first, one keyset page at a time."""
    page, next_cursor = await task_service.list_tasks(
        session,
        user,
        limit=paging.page_size(limit, settings),
        status=status_filter,
        cursor=cursor,
        batch_id=batch_id,
    )
    return TaskPage(items=[TaskOut.model_validate(t) for t in page], next_cursor=next_cursor)


@router.post(
    "/{task_id}/retry", response_model=TaskOut, responses=responses.errors(401, 404, 409, 422, 503)
)
async def retry_task(task_id: uuid.UUID, user: CurrentUser, dispatch: DispatchDep) -> TaskOut:
    """Run a failed or cancelled task again from a fresh start (attempts reset to 0)."""
    task = await task_service.retry_task(dispatch, task_service.Actor.owner(user), task_id)
    await dispatch.hints.outbox()
    return TaskOut.model_validate(task)


@router.post(
    "/{task_id}/cancel", response_model=TaskOut, responses=responses.errors(401, 404, 409, 422, 503)
)
async def cancel_task(
    task_id: uuid.UUID, user: CurrentUser, session: SessionDep, hints: HintsDep
) -> TaskOut:
    """Cancel a pending, queued or running task; a running scan stops without a result."""
    task = await task_service.cancel_task(session, task_service.Actor.owner(user), task_id)
    await task_service.announce_end(hints, task)
    return TaskOut.model_validate(task)
