"""`scanctl callbacks`: inspect completion-callback deliveries and replay dead ones."""

from __future__ import annotations

import enum
from typing import Annotated, Any

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
from scanctl.output import iso, short_time
from shared import callback_admin
from shared.db import deliveries
from shared.db.models import Delivery

app = typer.Typer(help="Inspect callback deliveries and replay dead ones.", no_args_is_help=True)


class State(enum.StrEnum):
    PENDING = "pending"
    DEAD = "dead"
    DELIVERED = "delivered"
    ALL = "all"


def delivery_json(row: Delivery) -> dict[str, Any]:
    """Everything but the payload and, of the URL, nothing hidden: it holds no secret
    (credentials in callback URLs are refused at submit)."""
    return {
        "id": row.id,
        "delivery_id": str(row.delivery_id),
        "state": callback_admin.delivery_state(row),
        "event": row.payload.get("event"),
        "task_id": row.task_id and str(row.task_id),
        "batch_id": row.batch_id and str(row.batch_id),
        "url": row.url,
        "attempts": row.attempts,
        "last_status": row.last_status,
        "last_error": row.last_error,
        "created_at": iso(row.created_at),
        "available_at": iso(row.available_at),
        "delivered_at": iso(row.delivered_at),
        "dead_at": iso(row.dead_at),
    }


@app.command("list")
def list_rows(
    state: Annotated[State, typer.Option(help="Which deliveries to show.")] = State.PENDING,
    limit: RowsOption = 50,
    json_output: JsonOption = False,
) -> None:
    """Deliveries, newest first."""

    async def load() -> list[Delivery]:
        async with db_session() as session:
            return list(await deliveries.list_page(session, None, state.value, limit))

    rows = run_async(load)
    if json_output:
        print_json([delivery_json(row) for row in rows])
        return
    table = Table("id", "state", "event", "url", "created", "tries", "last status", "last error")
    for row in rows:
        table.add_row(
            str(row.id),
            callback_admin.delivery_state(row),
            str(row.payload.get("event", "")),
            escape(row.url),
            short_time(row.created_at),
            str(row.attempts),
            str(row.last_status or ""),
            escape(row.last_error or ""),
        )
    console.print(table)


@app.command("replay")
def replay(
    delivery_ids: Annotated[
        list[int] | None, typer.Argument(metavar="ID", help="Dead deliveries to send again.")
    ] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Replay every dead one.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Make dead deliveries due now, their tries reset (same delivery id); relays are woken."""
    if bool(delivery_ids) == all_dead:
        fail("give either delivery IDs or --all-dead")

    async def do_replay() -> int:
        async with db_session() as session, session.begin():
            count = await callback_admin.replay_dead(session, delivery_ids or None)
        if count:
            await send_hint(lambda hints: hints.callbacks())
        return count

    count = run_async(do_replay)
    if delivery_ids and count < len(delivery_ids):
        fail(f"{len(delivery_ids) - count} of the given deliveries are not dead (or do not exist)")
    if json_output:
        print_json({"replayed": count})
        return
    console.print(f"{count} dead deliveries replayed")
