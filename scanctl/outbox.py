"""`scanctl outbox`: inspect outbox rows and replay dead ones after a fix."""

from __future__ import annotations

import enum
import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from scanctl.common import (
    JsonOption,
    RowsOption,
    console,
    db_session,
    fail,
    print_json,
    run_async,
    send_hint,
)
from scanctl.output import facts_table, outbox_json, short_time
from shared import outbox_admin
from shared.db import inspection, outbox
from shared.db.models import OutboxMessage

app = typer.Typer(help="Inspect the outbox and replay dead messages.", no_args_is_help=True)


class State(enum.StrEnum):
    UNPUBLISHED = "unpublished"
    DEAD = "dead"
    PUBLISHED = "published"
    ALL = "all"


@app.command("list")
def list_rows(
    state: Annotated[State, typer.Option(help="Which rows to show.")] = State.UNPUBLISHED,
    limit: RowsOption = 50,
    json_output: JsonOption = False,
) -> None:
    """Outbox rows, newest first (payloads only with `show`)."""

    async def load() -> list[OutboxMessage]:
        async with db_session() as session:
            chosen = None if state is State.ALL else state.value
            return list(await inspection.list_outbox(session, limit=limit, state=chosen))

    rows = run_async(load)
    if json_output:
        print_json([outbox_json(row, with_payload=False) for row in rows])
        return
    table = Table("id", "state", "task", "created", "attempts", "last error")
    for row in rows:
        table.add_row(
            str(row.id),
            outbox_admin.outbox_state(row),
            str(row.task_id or ""),
            short_time(row.created_at),
            str(row.publish_attempts),
            escape(row.last_error or ""),
        )
    console.print(table)


@app.command("show")
def show(
    outbox_id: Annotated[int, typer.Argument(metavar="ID", help="The outbox row id.")],
    json_output: JsonOption = False,
) -> None:
    """One row with its payload and last error."""

    async def load() -> OutboxMessage | None:
        async with db_session() as session:
            return await inspection.get_outbox_message(session, outbox_id)

    row = run_async(load)
    if row is None:
        fail(f"no outbox row {outbox_id}")
    data = outbox_json(row, with_payload=True)
    if json_output:
        print_json(data)
        return
    table = facts_table()
    for name, value in data.items():
        shown = (
            json.dumps(value) if isinstance(value, dict) else "" if value is None else str(value)
        )
        table.add_row(name, escape(shown))
    console.print(table, highlight=False)


def _why_not_dead(outbox_id: int) -> str:
    async def load() -> str:
        async with db_session() as session:
            return await outbox_admin.why_not_replayed(session, outbox_id)

    return run_async(load)


@app.command("replay")
def replay(
    outbox_id: Annotated[
        int | None, typer.Argument(metavar="ID", help="The dead row to replay.")
    ] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Replay every dead row.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Make dead rows due again (the relay publishes them); tasks they failed go back to pending.

    Run it after fixing what made the rows die. Rows and tasks change in one transaction.
    """
    if (outbox_id is None) == (not all_dead):
        fail("give either one outbox ID or --all-dead")

    ids = None if outbox_id is None else [outbox_id]

    async def do_replay() -> list[outbox.ReplayedMessage]:
        async with db_session() as session, session.begin():
            return await outbox_admin.replay_dead(session, ids)

    replayed = run_async(do_replay)
    if replayed:
        run_async(lambda: send_hint(lambda hints: hints.outbox()))
    if outbox_id is not None and not replayed:
        fail(_why_not_dead(outbox_id))
    if json_output:
        rows = [
            {"id": r.id, "task_id": r.task_id and str(r.task_id), "task_revived": r.task_revived}
            for r in replayed
        ]
        print_json(rows)
        return
    for r in replayed:
        task = f"task {r.task_id} back to pending" if r.task_revived else "task left as it was"
        console.print(f"replayed outbox row {r.id}: {task}", highlight=False)
    console.print(f"{len(replayed)} dead rows replayed")
