"""The commands that prepare and run the services: `migrate`, `api`, `relay`, `worker`, `dev`."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from scanctl.common import console, fail, load_settings
from scanctl.processes import THREADS_REFUSED, api_command, relay_command, worker_command
from shared import devenv


def _exec(command: list[str]) -> None:
    """Replace this process, so signals reach the service directly."""
    os.execvp(command[0], command)


def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    down: Annotated[bool, typer.Option("--down", help="Downgrade to REVISION instead.")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 0 only if the schema is current.")
    ] = False,
    wait_s: Annotated[
        float, typer.Option("--wait-s", min=0, help="With --check: wait this long for it.")
    ] = 0.0,
) -> None:
    """Apply the database schema (Alembic) up to REVISION, or down to it with --down."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import InterfaceError, OperationalError

    from shared.db import migrate as migrations

    # DDL, the migration lock and CONCURRENTLY need a whole session: never a transaction pooler.
    url = load_settings().direct_url
    if check:
        _check_schema(url, wait_s)
        return
    try:
        if down:
            migrations.downgrade(url, revision)
        else:
            migrations.upgrade(url, revision)
    except CommandError as exc:
        fail(str(exc))
    except (OperationalError, InterfaceError, OSError) as exc:
        fail(
            f"the database is unreachable ({type(exc).__name__}); "
            "check DATABASE_DIRECT_URL (or DATABASE_URL)"
        )
    console.print(f"database at {'revision ' + revision if down else revision}")


def _check_schema(url: str, wait_s: float) -> None:
    """Exit 0 once the database is at the code's head revision, 1 if it is not by `wait_s`."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    from shared.db import migrate as migrations

    head = migrations.head_revision()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            current = asyncio.run(migrations.current_revision(url))
        except (OperationalError, InterfaceError, OSError) as exc:
            current, problem = None, f"the database is unreachable ({type(exc).__name__})"
        else:
            problem = f"the database is at {current or 'no revision'}, the code needs {head}"
        if current == head:
            console.print(f"database at {head}")
            return
        if time.monotonic() >= deadline:
            fail(problem)
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))


def api() -> None:
    """Run the HTTP API under uvicorn (SCAN_API_HOST, SCAN_API_PORT)."""
    settings = load_settings()
    _exec(api_command(settings.api_host, settings.api_port))


def relay() -> None:
    """Run the relay daemon: publish committed outbox rows to the broker."""
    _exec(relay_command())


def worker(
    processes: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Scans in flight per process [default: SCAN_WORKER_CONCURRENCY]."),
    ] = None,
    threads: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run Dramatiq workers for the scan queue (JSON logs, metrics on SCAN_WORKER_METRICS_PORT)."""
    if threads is not None:
        # Scripts written for the thread-per-scan worker must fail loudly, not run 8 scans.
        console.print(f"[red]Error:[/red] {THREADS_REFUSED}")
        raise typer.Exit(2)
    _exec(worker_command(processes, concurrency))


def dev(
    data_dir: Annotated[
        Path, typer.Option(help="Where embedded servers keep their data.")
    ] = devenv.DEFAULT_DATA_DIR,
) -> None:
    """Run api, relay and worker together (embedded PostgreSQL/Redis unless URLs are set)."""
    from scanctl.dev import run_stack

    raise typer.Exit(run_stack(data_dir.resolve()))
