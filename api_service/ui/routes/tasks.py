"""Tasks: a filtered list, one task's story, and retry/cancel through the API's own use cases."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from api_service import task_service
from api_service.deps import HintsDep, RedisDep, RequestIdDep, SessionDep, SettingsDep
from api_service.ui import reads, views
from api_service.ui.auth import Admin, UiActor, UiAdmin
from api_service.ui.filters import read_query
from api_service.ui.rendering import page, redirect, safe_next
from shared.db.models import TaskStatus
from shared.errors import InvalidInput, ScanOutboxError
from shared.logging import get_logger

log = get_logger(__name__)
router = APIRouter(prefix="/ui/tasks")

PAGE_SIZE = 50
BackField = Annotated[str, Form(alias="back")]


def not_found(request: Request, admin: Admin, what: str) -> Response:
    context = {"admin": admin, "title": "Not found", "message": f"There is no {what}."}
    return page(request, "error.html", context, status_code=404)


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
        "admin": admin,
        "title": "Tasks",
        "nav": "tasks",
        "query": query,
        "rows": rows,
        "older": older,
        "statuses": [s.value for s in TaskStatus],
        "paged": cursor is not None,
    }
    return page(request, "tasks.html", context)


@router.get("/{task_id}")
async def task_page(
    request: Request, task_id: str, admin: UiAdmin, session: SessionDep
) -> Response:
    parsed = _task_id(task_id)
    detail = await views.load_task(session, parsed) if parsed else None
    if detail is None:
        return not_found(request, admin, "such task")
    context = {"admin": admin, "title": f"Task {detail.task.target_domain}", "nav": "tasks"}
    return page(request, "task.html", {**context, "d": detail})


@router.post("/{task_id}/retry")
async def retry_task(
    request: Request,
    task_id: str,
    admin: UiActor,
    session: SessionDep,
    redis: RedisDep,
    hints: HintsDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
    back: BackField = "",
) -> Response:
    parsed = _task_id(task_id)
    target = safe_next(back or f"/ui/tasks/{task_id}")
    if parsed is None:
        return redirect(request, target, notice="There is no such task.", error=True)
    actor = task_service.Actor.admin(admin.user)
    try:
        await task_service.retry_task(
            session, redis, settings, actor, parsed, request_id=request_id
        )
    except ScanOutboxError as exc:
        return redirect(request, target, notice=exc.message, error=True)
    await hints.outbox()
    log.info("ui_task_retried", task_id=str(parsed), admin_id=admin.user.id)
    return redirect(request, target, notice="Task sent again: it is pending.")


@router.post("/{task_id}/cancel")
async def cancel_task(
    request: Request,
    task_id: str,
    admin: UiActor,
    session: SessionDep,
    hints: HintsDep,
    back: BackField = "",
) -> Response:
    parsed = _task_id(task_id)
    target = safe_next(back or f"/ui/tasks/{task_id}")
    if parsed is None:
        return redirect(request, target, notice="There is no such task.", error=True)
    try:
        task = await task_service.cancel_task(session, task_service.Actor.admin(admin.user), parsed)
    except ScanOutboxError as exc:
        return redirect(request, target, notice=exc.message, error=True)
    await task_service.announce_end(hints, task)
    log.info("ui_task_cancelled", task_id=str(parsed), admin_id=admin.user.id)
    return redirect(request, target, notice="Task cancelled.")
