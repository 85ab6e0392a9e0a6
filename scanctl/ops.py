"""`scanctl status`, `cleanup-orphaned` and `full-cleanup`: the operator's health and repairs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import redis.asyncio as aioredis
import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from scanctl.common import (
    JsonOption,
    console,
    db_and_redis,
    load_settings,
    print_json,
    progress_bar,
    run_async,
)
from shared import cleanup, health_report
from shared.settings import Settings

DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Only report what would be done; change nothing.")
]
Cleanup = Callable[[cleanup.CleanupScope], Awaitable[cleanup.CleanupReport]]


def _mark(ok: bool, good: str = "reachable", bad: str = "unreachable") -> str:
    return f"[green]{good}[/green]" if ok else f"[red]{bad}[/red]"


def _status_table(report: health_report.HealthReport, settings: Settings) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("verdict", _mark(report.healthy, "healthy", "unhealthy"))
    table.add_row("database", _mark(report.database_reachable))
    table.add_row("redis", _mark(report.redis_reachable))
    table.add_row("broker", _mark(report.broker_reachable))
    facts = report.facts
    if facts is not None:
        tasks = "  ".join(f"{status} {count}" for status, count in facts.tasks_by_status.items())
        age_s = facts.outbox.oldest_unpublished_age_s
        oldest = f" (oldest {age_s:.1f}s)" if age_s is not None else ""
        table.add_row("tasks", tasks)
        table.add_row("outbox backlog", f"{facts.outbox.backlog}{oldest}")
        table.add_row("outbox dead", str(facts.outbox.dead))
        table.add_row(
            "orphans",
            f"expired leases {facts.orphans.expired_leases}  "
            f"unlocated queued > {settings.queued_stale_s:g}s {facts.orphans.unlocated}",
        )
        for client in facts.clients:
            table.add_row(
                f"client {client.client} ({client.lane})",
                f"backlog {client.backlog}  in broker {client.in_broker}",
            )
    return table


def status(json_output: JsonOption = False) -> None:
    """Tasks by state, outbox backlog (and each client's, with its messages in the broker), dead
    rows, orphans, Redis and database reachability.

    Exit code 0 when healthy, 1 when not: usable from cron and probes.
    """
    settings = load_settings()

    async def gather() -> health_report.HealthReport:
        async with db_and_redis(settings) as (sessionmaker, redis):
            return await health_report.gather_health(sessionmaker, redis, settings)

    report = run_async(gather)
    if json_output:
        print_json(report.to_json())
    else:
        console.print(_status_table(report, settings))
        for reason in report.reasons:
            console.print(f"[red]✗[/red] {reason}", highlight=False)
    raise typer.Exit(0 if report.healthy else 1)


def _print_report(report: cleanup.CleanupReport) -> None:
    title = "dry run: nothing was changed" if report.dry_run else None
    table = Table("step", "result", title=title)
    for step, counts in report.steps.items():
        done = "  ".join(f"{name.replace('_', ' ')} {count}" for name, count in counts.items())
        table.add_row(step, done)
    console.print(table)


def _run_cleanup(operation: Cleanup, dry_run: bool, json_output: bool) -> None:
    settings = load_settings()

    async def run() -> cleanup.CleanupReport:
        sessionmaker: async_sessionmaker[AsyncSession]
        redis: aioredis.Redis
        async with db_and_redis(settings) as (sessionmaker, redis):
            with progress_bar(enabled=not json_output) as progress:
                scope = cleanup.CleanupScope(sessionmaker, redis, settings, dry_run, progress)
                return await operation(scope)

    report = run_async(run)
    if json_output:
        print_json({"dry_run": report.dry_run, "steps": report.steps})
    else:
        _print_report(report)


def cleanup_orphaned(dry_run: DryRunOption = False, json_output: JsonOption = False) -> None:
    """Re-dispatch or fail orphaned tasks; remove stale task markers and locks without a TTL.

    Orphans are running tasks whose lease expired and tasks queued longer than
    SCAN_QUEUED_STALE_S; they go through the same code as the relay's maintenance job.
    """
    _run_cleanup(cleanup.cleanup_orphaned, dry_run, json_output)


def full_cleanup(dry_run: DryRunOption = False, json_output: JsonOption = False) -> None:
    """cleanup-orphaned, then prune published outbox rows and expire old idempotency keys."""
    _run_cleanup(cleanup.full_cleanup, dry_run, json_output)
