"""`scanctl schedules`: a client's recurring scans through the HTTP API, as any client would."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from scanctl import scan
from scanctl.common import JsonOption, console, fail, print_json

app = typer.Typer(
    help="Recurring scans: create, list, pause, resume, delete, runs.", no_args_is_help=True
)

ApiUrl = Annotated[
    str | None,
    typer.Option(envvar="SCAN_API_URL", help="Base URL of the API [default: from settings]."),
]
Token = Annotated[
    str | None,
    typer.Option(envvar="SCAN_TOKEN", help="API token (prefer the SCAN_TOKEN variable)."),
]
ScheduleId = Annotated[str, typer.Argument(help="The schedule's id.")]


def _client(api_url: str | None, token: str | None) -> httpx.Client:
    if not token:
        fail("an API token is required: set SCAN_TOKEN or pass --token")
    return httpx.Client(
        base_url=api_url or scan._default_api_url(),
        headers={"Authorization": f"Bearer {token}"},
        timeout=scan.HTTP_TIMEOUT_S,
    )


def _when(row: dict[str, Any]) -> str:
    if row["cron"]:
        return f"{row['cron']} ({row['timezone']})"
    return f"every {row['interval_s']} s"


def _show(rows: list[dict[str, Any]]) -> None:
    table = Table("id", "name", "when", "domains", "missed", "state", "next fire (UTC)")
    for row in rows:
        table.add_row(
            row["id"],
            escape(row["name"] or ""),
            escape(_when(row)),
            str(len(row["domains"])),
            row["missed"],
            "paused" if row["paused"] else "active",
            row["next_fire_at"] or "",
        )
    console.print(table)


def _domains(domain: list[str] | None, file: Path | None) -> list[str] | None:
    names = list(domain or [])
    if file is not None:
        try:
            lines = file.read_text().splitlines()
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror}")
        names += [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    return names or None


@app.command("create")
def create(
    cron: Annotated[str | None, typer.Option(help="A five-field cron expression.")] = None,
    interval_s: Annotated[
        int | None, typer.Option("--interval", min=1, help="Seconds between runs.")
    ] = None,
    timezone: Annotated[str, typer.Option(help="IANA time zone of --cron.")] = "UTC",
    domain: Annotated[list[str] | None, typer.Option(help="A domain (repeatable).")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Domains from FILE, one a line.")
    ] = None,
    batch_template: Annotated[
        str | None, typer.Option(help="Copy the domains and config of this batch of yours.")
    ] = None,
    keyword: Annotated[list[str] | None, typer.Option(help="A keyword (repeatable).")] = None,
    regex: Annotated[list[str] | None, typer.Option(help="An RE2 pattern (repeatable).")] = None,
    callback_url: Annotated[str | None, typer.Option(help="https URL to POST to.")] = None,
    changes_only: Annotated[
        bool, typer.Option("--changes-only", help="Call back only with what changed.")
    ] = False,
    missed: Annotated[str, typer.Option(help="run_once or skip, after an outage.")] = "run_once",
    name: Annotated[str | None, typer.Option(help="A name to tell it by.")] = None,
    api_url: ApiUrl = None,
    token: Token = None,
    json_output: JsonOption = False,
) -> None:
    """Create a schedule (exit 1 naming the field the API refused)."""
    body: dict[str, Any] = {
        "name": name,
        "cron": cron,
        "interval_s": interval_s,
        "timezone": timezone,
        "domains": _domains(domain, file),
        "batch_template": batch_template,
        "callback_url": callback_url,
        "callback": "changes" if changes_only else "finished",
        "missed": missed,
    }
    if keyword or regex:
        body["config"] = {"keywords": keyword or [], "regexes": regex or []}
    with _client(api_url, token) as client:
        row = scan._call(client, "POST", "/api/v1/schedules", json=body)
    if json_output:
        print_json(row)
        return
    _show([row])


@app.command("list")
def list_schedules(
    api_url: ApiUrl = None, token: Token = None, json_output: JsonOption = False
) -> None:
    """Your schedules with their next fire times."""
    with _client(api_url, token) as client:
        rows = scan._call(client, "GET", "/api/v1/schedules")["items"]
    if json_output:
        print_json(rows)
        return
    _show(rows)


def _add_one_schedule_command(name: str, method: str, suffix: str, summary: str) -> None:
    """`scanctl schedules NAME ID`: one API call on the schedule, which is then printed."""

    def command(
        schedule_id: ScheduleId,
        api_url: ApiUrl = None,
        token: Token = None,
        json_output: JsonOption = False,
    ) -> None:
        with _client(api_url, token) as client:
            row = scan._call(client, method, f"/api/v1/schedules/{schedule_id}{suffix}")
        if json_output:
            print_json(row)
            return
        _show([row])

    command.__doc__ = summary
    app.command(name)(command)


# The commands that differ only in the call they make, in the order `--help` lists them.
for _name, _method, _suffix, _summary in (
    ("show", "GET", "", "One schedule."),
    ("pause", "POST", "/pause", "No more runs until resumed."),
    ("resume", "POST", "/resume", "Run again from the next tick after now."),
):
    _add_one_schedule_command(_name, _method, _suffix, _summary)


@app.command("delete")
def delete(schedule_id: ScheduleId, api_url: ApiUrl = None, token: Token = None) -> None:
    """Delete the schedule and its run records (the runs' batches stay)."""
    with _client(api_url, token) as client:
        try:
            response = client.delete(f"/api/v1/schedules/{schedule_id}")
        except httpx.HTTPError as exc:
            fail(f"cannot reach the API ({type(exc).__name__})")
        if response.status_code >= 400:
            scan._refused(response)
    console.print(f"schedule {schedule_id} deleted")


@app.command("runs")
def runs(
    schedule_id: ScheduleId,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Runs at most.")] = 20,
    api_url: ApiUrl = None,
    token: Token = None,
    json_output: JsonOption = False,
) -> None:
    """The schedule's runs, latest first: each one's batch, or why it was skipped."""
    with _client(api_url, token) as client:
        path = f"/api/v1/schedules/{schedule_id}/runs"
        rows = scan._call(client, "GET", path, params={"limit": limit})["items"]
    if json_output:
        print_json(rows)
        return
    table = Table("run", "tick (UTC)", "fired", "missed", "batch", "skipped", "changed")
    for row in rows:
        changes = row["changes"]
        table.add_row(
            str(row["id"]),
            row["tick_at"],
            row["fired_at"],
            str(row["missed_ticks"]),
            row["batch_id"] or "",
            escape(row["skipped_reason"] or ""),
            "" if changes is None else str(len(changes)),
        )
    console.print(table)
