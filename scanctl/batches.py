"""`scanctl batches`: list batches across users, show one's progress, cancel it, and write
all of its results (NDJSON or CSV) to a file or stdout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.markup import escape
from rich.table import Table

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
from scanctl.output import iso
from shared.batch_export import ExportFormat, stream
from shared.db import batches, inspection, tasks
from shared.db.engine import create_engine, create_sessionmaker
from shared.db.models import TERMINAL_STATUSES, Batch

app = typer.Typer(
    help="Inspect batches, cancel them and export their results.", no_args_is_help=True
)
BatchIdArgument = Annotated[str, typer.Argument(metavar="ID", help="The batch id.")]
TERMINAL = frozenset(status.value for status in TERMINAL_STATUSES)


def batch_json(batch: Batch, owner: str, progress: batches.BatchProgress) -> dict[str, Any]:
    return {
        "id": str(batch.id),
        "user": owner,
        "task_count": batch.task_count,
        "counts": progress.counts,
        "done": progress.finished_at is not None,
        "created_at": iso(batch.created_at),
        "finished_at": iso(progress.finished_at),
        "callback_url": batch.callback_url,
    }


async def _with_progress(rows: list[tuple[Batch, str]]) -> list[dict[str, Any]]:
    async with db_session() as session:
        progress = await batches.get_batches_progress(session, [b.id for b, _ in rows], TERMINAL)
    return [batch_json(batch, owner, progress[batch.id]) for batch, owner in rows]


@app.command("list")
def list_batches(
    user: Annotated[str | None, typer.Option(help="Only this user's batches.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Batches at most.")] = 20,
    json_output: JsonOption = False,
) -> None:
    """Batches newest first, across users, with their tasks by status."""

    async def load() -> list[dict[str, Any]]:
        async with db_session() as session:
            rows = list(
                await inspection.list_batches_with_owner(session, limit=limit, user_name=user)
            )
        return await _with_progress(rows)

    rows = run_async(load)
    if json_output:
        print_json(rows)
        return
    table = Table("id", "user", "tasks", "by status", "done", "created")
    table.columns[0].min_width = 36
    for row in rows:
        counts = ", ".join(f"{status} {n}" for status, n in sorted(row["counts"].items()))
        table.add_row(
            row["id"],
            escape(row["user"]),
            str(row["task_count"]),
            counts,
            "yes" if row["done"] else "",
            row["created_at"][:19].replace("T", " "),
        )
    console.print(table)


def _load_one(batch_id: str) -> dict[str, Any]:
    parsed = parsed_id(batch_id, "batch")

    async def load() -> dict[str, Any] | None:
        async with db_session() as session:
            found = await inspection.get_batch_with_owner(session, parsed)
        return None if found is None else (await _with_progress([found]))[0]

    data = run_async(load)
    if data is None:
        fail(f"no batch {batch_id}")
    return data


def _print_batch(data: dict[str, Any]) -> None:
    console.print(f"batch {data['id']} of {escape(data['user'])}: {data['task_count']} tasks")
    for status, n in sorted(data["counts"].items()):
        console.print(f"  {status:<10} {n}")
    ended = f"finished {data['finished_at']}" if data["done"] else "not finished"
    console.print(f"  created {data['created_at']}, {ended}")


@app.command("show")
def show(batch_id: BatchIdArgument, json_output: JsonOption = False) -> None:
    """One batch: its owner, its tasks by status, when it finished."""
    data = _load_one(batch_id)
    if json_output:
        print_json(data)
    else:
        _print_batch(data)


@app.command("cancel")
def cancel(batch_id: BatchIdArgument, json_output: JsonOption = False) -> None:
    """Cancel every task of the batch that has not ended, whoever owns it."""
    parsed = parsed_id(batch_id, "batch")

    async def do_cancel() -> int | None:
        async with db_session() as session, session.begin():
            if await inspection.get_batch_with_owner(session, parsed) is None:
                return None
            return await tasks.cancel_batch_tasks(session, None, parsed)

    cancelled = run_async(do_cancel)
    if cancelled is None:
        fail(f"no batch {batch_id}")
    if cancelled:
        ended = [(parsed, parsed)]
        run_async(lambda: send_hint(lambda hints: hints.finished(ended, callbacks=True)))
    data = _load_one(batch_id)
    if json_output:
        print_json({**data, "cancelled": cancelled})
        return
    console.print(f"{cancelled} tasks cancelled")
    _print_batch(data)


@app.command("results")
def results(
    batch_id: BatchIdArgument,
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="ndjson: one JSON object per task; csv.")
    ] = ExportFormat.NDJSON,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Every task of the batch with its report, in submission order (flat memory)."""
    parsed = parsed_id(batch_id, "batch")
    _load_one(batch_id)  # a missing batch is an error, not an empty file
    settings = load_settings()

    async def export(sink: BinaryIO) -> None:
        engine = create_engine(settings)
        try:
            chunks = stream(
                create_sessionmaker(engine), parsed, export_format, settings.export_chunk_rows
            )
            async for chunk in chunks:
                sink.write(chunk)
        finally:
            await engine.dispose()

    if output is None:
        run_async(lambda: export(sys.stdout.buffer))
        return
    with output.open("wb") as sink:
        run_async(lambda: export(sink))
    console.print(f"results of batch {batch_id} written to {output}", highlight=False)
