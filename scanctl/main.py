"""The `scanctl` entry point: one Typer app listing every command; each command's module is
imported only when that command is used (scanctl/lazy_commands.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar

import typer

from scanctl.lazy_commands import LazyCommand, LazyGroup


class ScanctlCommands(LazyGroup):
    """Every scanctl command, in the order `scanctl --help` lists them. A new command is an
    entry here; tests/unit/scanctl/test_command_table.py holds each help line to the command's
    own docstring or `help=`."""

    lazy_commands: ClassVar[Mapping[str, LazyCommand]] = {
        "status": LazyCommand(
            "scanctl.ops:status",
            "Tasks by state, outbox backlog (and each client's, with its messages in the broker), "
            "dead\nrows, orphans, Redis and database reachability.",
        ),
        "cleanup-orphaned": LazyCommand(
            "scanctl.ops:cleanup_orphaned",
            "Re-dispatch or fail orphaned tasks; remove stale task markers and locks without a "
            "TTL.",
        ),
        "full-cleanup": LazyCommand(
            "scanctl.ops:full_cleanup",
            "cleanup-orphaned, then prune published outbox rows and expire old idempotency keys.",
        ),
        "scan": LazyCommand(
            "scanctl.scan:scan",
            "Submit DOMAIN (or every domain in --file) through the HTTP API; with --wait, show\n"
            "progress and then the report.",
        ),
        "migrate": LazyCommand(
            "scanctl.services:migrate",
            "Apply the database schema (Alembic) up to REVISION, or down to it with --down.",
        ),
        "api": LazyCommand(
            "scanctl.services:api",
            "Run the HTTP API under uvicorn (SCAN_API_HOST, SCAN_API_PORT).",
        ),
        "relay": LazyCommand(
            "scanctl.services:relay",
            "Run the relay daemon: publish committed outbox rows to the broker.",
        ),
        "worker": LazyCommand(
            "scanctl.services:worker",
            "Run Dramatiq workers for the scan queue (JSON logs, metrics on "
            "SCAN_WORKER_METRICS_PORT).",
        ),
        "dev": LazyCommand(
            "scanctl.services:dev",
            "Run api, relay and worker together (embedded PostgreSQL/Redis unless URLs are set).",
        ),
        "users": LazyCommand("scanctl.users:app", "Manage API users and their tokens."),
        "tasks": LazyCommand("scanctl.tasks:app", "Inspect, retry and cancel tasks."),
        "batches": LazyCommand(
            "scanctl.batches:app", "Inspect batches, cancel them and export their results."
        ),
        "outbox": LazyCommand("scanctl.outbox:app", "Inspect the outbox and replay dead messages."),
        "callbacks": LazyCommand(
            "scanctl.callbacks:app", "Inspect callback deliveries and replay dead ones."
        ),
        "schedules": LazyCommand(
            "scanctl.schedules:app", "Recurring scans: create, list, pause, resume, delete, runs."
        ),
    }


app = typer.Typer(
    name="scanctl",
    cls=ScanctlCommands,
    help="Operate scan-outbox: health, cleanups, outbox, tasks, batches, schedules, callbacks, "
    "users, scans and the services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain click output: usage errors are one "Error: ..." line (scripts and logs read them).
    rich_markup_mode=None,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        # Reading the installed metadata costs every other command nothing when done here.
        from importlib.metadata import version as package_version

        typer.echo(f"scanctl {package_version('scan-outbox')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Operate scan-outbox: health, cleanups, outbox, tasks, batches, schedules, callbacks,
    users, scans and the services."""


if __name__ == "__main__":
    app()
