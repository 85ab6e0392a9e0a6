"""`scanctl tasks`: list tasks across users, show one with its report, retry or cancel one."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from scanctl.common import (
    JsonOption,
    console,
    db_session,
    fail,
    load_settings,
    parsed_id,
    print_json,
    run_async,
    send_hint,
)
from scanctl.output import short_time, task_json, task_view
from shared.db import inspection, tasks
from shared.db.models import Task, TaskStatus
from shared.messages import scan_entry
from shared.settings import Settings

app = typer.Typer(help="Inspect, retry and cancel tasks.", no_args_is_help=True)
TaskIdArgument = Annotated[str, typer.Argument(metavar="ID", help="The task id.")]


@app.command("list")
def list_tasks(
    status: Annotated[TaskStatus | None, typer.Option(help="Only tasks in this state.")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user's tasks.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Tasks at most.")] = 20,
    json_output: JsonOption = False,
) -> None:
    """Tasks newest first, across users."""

    async def load() -> list[tuple[Task, str]]:
        async with db_session() as session:
            rows = await inspection.list_tasks_with_owner(
                session, limit=limit, status=status.value if status else None, user_name=user
            )
            return list(rows)

    rows = run_async(load)
    if json_output:
        print_json([task_json(task, owner) for task, owner in rows])
        return
    table = Table("id", "user", "domain", "status", "attempts", "created")
    table.columns[0].min_width = 36
    for task, owner in rows:
        table.add_row(
            str(task.id),
            escape(owner),
            task.target_domain,
            task.status,
            f"{task.attempts}/{task.max_attempts}",
            short_time(task.created_at),
        )
    console.print(table)


@app.command("show")
def show(task_id: TaskIdArgument, json_output: JsonOption = False) -> None:
    """One task with its report."""
    parsed = parsed_id(task_id, "task")

    async def load() -> tuple[Task, str] | None:
        async with db_session() as session:
            return await inspection.get_task_with_owner(session, parsed)

    found = run_async(load)
    if found is None:
        fail(f"no task {task_id}")
    data = task_json(*found)
    if json_output:
        print_json(data)
    else:
        console.print(task_view(data), highlight=False)


TaskChange = Callable[[AsyncSession, uuid.UUID], Awaitable[Task | None]]


def _change_task(
    task_id: str, change: TaskChange, action: str, allowed: str, settings: Settings | None = None
) -> Task:
    """The task as `change` left it, in one transaction; else one line saying why not (no such
    task, or a status only `allowed` tasks leave) and exit code 1."""
    parsed = parsed_id(task_id, "task")

    async def apply() -> tuple[Task | None, tuple[Task, str] | None]:
        async with db_session(settings) as session, session.begin():
            task = await change(session, parsed)
            current = None if task else await inspection.get_task_with_owner(session, parsed)
            return task, current

    task, current = run_async(apply)
    if task is not None:
        return task
    if current is None:
        fail(f"no task {task_id}")
    fail(f"a {current[0].status} task cannot be {action}; only {allowed} tasks can")


@app.command("retry")
def retry(task_id: TaskIdArgument, json_output: JsonOption = False) -> None:
    """Run a failed or cancelled task again from a fresh start (attempts reset), whoever owns
    it; its new message is committed with it."""
    settings = load_settings()

    def retry_one(session: AsyncSession, task_id: uuid.UUID) -> Awaitable[Task | None]:
        entry = scan_entry(task_id, settings.queue_name)
        return tasks.retry_task(session, None, task_id, entry)

    task = _change_task(task_id, retry_one, "retried", "failed or cancelled", settings)
    run_async(lambda: send_hint(lambda hints: hints.outbox()))
    _print_transition(task, "pending again", json_output)


@app.command("cancel")
def cancel(task_id: TaskIdArgument, json_output: JsonOption = False) -> None:
    """Cancel a pending, queued or running task, whoever owns it (a running scan stops at its
    next lease renewal)."""

    def cancel_one(session: AsyncSession, task_id: uuid.UUID) -> Awaitable[Task | None]:
        return tasks.cancel_task(session, None, task_id)

    task = _change_task(task_id, cancel_one, "cancelled", "pending, queued or running")
    ended = [(task.id, task.batch_id)]
    run_async(lambda: send_hint(lambda hints: hints.finished(ended, callbacks=True)))
    _print_transition(task, "cancelled", json_output)


def _print_transition(task: Task, what: str, json_output: bool) -> None:
    if json_output:
        print_json({"id": str(task.id), "status": task.status, "attempts": task.attempts})
    else:
        console.print(f"task {task.id} {what}")
