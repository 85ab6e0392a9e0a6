"""Tasks: a filtered list, one task's story, and retry/cancel through the API's own use cases."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from starlette.responses import Response

from api_service import task_service
from api_service.deps import DispatchDep, HintsDep, SessionDep
from api_service.ui import reads, views
from api_service.ui.actions import FormAction, UiAction
from api_service.ui.auth import Admin, UiAdmin
from api_service.ui.filters import read_query
from api_service.ui.rendering import admin_page
from shared.db.models import TaskStatus
from shared.errors import InvalidInput, ScanOutboxError
from shared.logging import get_logger

log = get_logger(__name__)
router = APIRouter(prefix="/ui/tasks")

PAGE_SIZE = 50


def not_found(request: Request, admin: Admin, what: str) -> Response:
    context = {"message": f"There is no {what}."}
    return admin_page(request, admin, "error.html", "Not found", context, status_code=404)


def _task_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


@router.get("")
async def task_list(
    request: Request,
    admin: UiAdmin,
    session: SessionDep,
    status: str = "",
    user: str = "",
    domain: str = "",
    since: str = "",
    until: str = "",
    before: str = "",
) -> Response:
    query = read_query(status, user, domain, since, until)
    cursor = None
    if before:
        try:
            cursor = task_service.decode_cursor(before[:200])
        except InvalidInput:
            query.problems.append("the page cursor is not valid: showing the newest tasks")
    rows = await reads.search_tasks(session, query.to_filter(), limit=PAGE_SIZE + 1, before=cursor)
    older = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        older = query.url(task_service.encode_cursor(rows[-1][0]))
    context = {
        "query": query,
        "rows": rows,
        "older": older,
        "statuses": [s.value for s in TaskStatus],
        "paged": cursor is not None,
    }
    return admin_page(request, admin, "tasks.html", "Tasks", context, nav="tasks")


@router.get("/{task_id}")
async def task_page(
    request: Request, task_id: str, admin: UiAdmin, session: SessionDep
) -> Response:
    parsed = _task_id(task_id)
    detail = await views.load_task(session, parsed) if parsed else None
    if detail is None:
        return not_found(request, admin, "such task")
    title = f"Task {detail.task.target_domain}"
    return admin_page(request, admin, "task.html", title, {"d": detail}, nav="tasks")


async def _act_on(
    action: FormAction, task_id: str, act: Callable[[uuid.UUID], Awaitable[str]]
) -> Response:
    """Back to the form's page (the task's by default) with the notice `act` returns for
    the task, or with why there is no such task or why it refused."""
    here = f"/ui/tasks/{task_id}"
    parsed = _task_id(task_id)
    if parsed is None:
        return action.answer(here, "There is no such task.", error=True)
    try:
        notice = await act(parsed)
    except ScanOutboxError as exc:
        return action.answer(here, exc.message, error=True)
    return action.answer(here, notice)


@router.post("/{task_id}/retry")
async def retry_task(task_id: str, action: UiAction, dispatch: DispatchDep) -> Response:
    async def retry(parsed: uuid.UUID) -> str:
        actor = task_service.Actor.admin(action.admin.user)
        await task_service.retry_task(dispatch, actor, parsed)
        await dispatch.hints.outbox()
        log.info("ui_task_retried", task_id=str(parsed), admin_id=action.admin.user.id)
        return "Task sent again: it is pending."

    return await _act_on(action, task_id, retry)


@router.post("/{task_id}/cancel")
async def cancel_task(
    task_id: str, action: UiAction, session: SessionDep, hints: HintsDep
) -> Response:
    async def cancel(parsed: uuid.UUID) -> str:
        actor = task_service.Actor.admin(action.admin.user)
        task = await task_service.cancel_task(session, actor, parsed)
        await task_service.announce_end(hints, task)
        log.info("ui_task_cancelled", task_id=str(parsed), admin_id=action.admin.user.id)
        return "Task cancelled."

    return await _act_on(action, task_id, cancel)
