"""`scanctl tasks`: list tasks across users and show one with its report."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from shared.cli.common import JsonOption, console, db_session, fail, print_json, run_async
from shared.cli.render import short_time, task_json, task_view
from shared.db import inspection
from shared.db.models import Task, TaskStatus

app = typer.Typer(help="Inspect tasks.", no_args_is_help=True)


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
def show(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task id.")],
    json_output: JsonOption = False,
) -> None:
    """One task with its report."""
    try:
        parsed = uuid.UUID(task_id)
    except ValueError:
        fail(f"{task_id!r} is not a task id (a UUID)")

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
