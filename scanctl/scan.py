"""`scanctl scan DOMAIN`: submit a scan through the HTTP API, as any client would."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import httpx
import typer

from scanctl import batch_scan
from scanctl.common import JsonOption, console, err_console, fail, load_settings, print_json
from scanctl.output import task_view

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
POLL_INTERVAL_S = 0.5
WAIT_PER_REQUEST_S = 30
HTTP_TIMEOUT_S = 10.0


def _shown(url: str) -> str:
    """The URL without any user:password, for messages."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _default_api_url() -> str:
    settings = load_settings()
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::") else settings.api_host
    return f"http://{host}:{settings.api_port}"


def _refused(response: httpx.Response) -> NoReturn:
    try:
        error = response.json()["error"]
        code, message, field = error["code"], error["message"], error.get("field")
    except (ValueError, KeyError, TypeError):
        code, message, field = "http_error", response.reason_phrase, None
    if response.status_code == 401:
        fail(f"the API refused the token (401 {code}): {message}; check --token or SCAN_TOKEN")
    where = f" [{field}]" if field else ""
    fail(f"the API answered {response.status_code} {code}: {message}{where}")


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the API at {_shown(str(client.base_url))} ({type(exc).__name__})")
    if response.status_code >= 400:
        _refused(response)
    body: dict[str, Any] = response.json()
    return body


def _wait(client: httpx.Client, task: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    started = time.monotonic()
    with err_console.status(f"{task['target_domain']}: {task['status']}") as spinner:
        while task["status"] not in TERMINAL:
            elapsed_s = time.monotonic() - started
            if elapsed_s > timeout_s:
                fail(f"gave up after {timeout_s:g}s; task {task['id']} is still {task['status']}")
            spinner.update(f"{task['target_domain']}: {task['status']} ({elapsed_s:.0f}s)")
            asked = time.monotonic()
            # The API answers as soon as the task ends (or after the wait); an older API
            # without `wait` answers at once, hence the floor between asks.
            task = _call(
                client,
                "GET",
                f"/api/v1/tasks/{task['id']}",
                params={"wait": WAIT_PER_REQUEST_S},
                timeout=WAIT_PER_REQUEST_S + HTTP_TIMEOUT_S,
            )
            if task["status"] not in TERMINAL:
                time.sleep(max(0.0, POLL_INTERVAL_S - (time.monotonic() - asked)))
    return task


def scan(
    domain: Annotated[
        str | None, typer.Argument(help="The domain to scan, e.g. example.com.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", help="Scan every domain in FILE (one a line, # comments), in batches."
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Domains per batch with --file (the API's limit applies).")
    ] = 1000,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the task until it ends.")] = False,
    api_url: Annotated[
        str | None,
        typer.Option(envvar="SCAN_API_URL", help="Base URL of the API [default: from settings]."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="SCAN_TOKEN", help="API token (prefer the SCAN_TOKEN variable)."),
    ] = None,
    keyword: Annotated[
        list[str] | None, typer.Option(help="A keyword to look for (repeatable).")
    ] = None,
    regex: Annotated[
        list[str] | None, typer.Option(help="A regular expression to look for (repeatable).")
    ] = None,
    timeout_s: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds --wait waits at most.")
    ] = 600.0,
    json_output: JsonOption = False,
) -> None:
    """Submit DOMAIN (or every domain in --file) through the HTTP API; with --wait, show
    progress and then the report.

    Exit code 0 when every scan was accepted (or, with --wait, succeeded), 1 otherwise.
    """
    if not token:
        fail("an API token is required: set SCAN_TOKEN or pass --token")
    if (domain is None) == (file is None):
        fail("give either a DOMAIN or --file FILE")
    request_id = uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {token}", "X-Request-ID": request_id}
    config = {"keywords": keyword or [], "regexes": regex or []}
    base_url = api_url or _default_api_url()
    if file is not None:
        _scan_file(file, base_url, headers, config, batch_size, wait, timeout_s, json_output)
        return
    body = {"target_domain": domain, "config": config}
    with httpx.Client(base_url=base_url, headers=headers, timeout=HTTP_TIMEOUT_S) as client:
        task = _call(client, "POST", "/api/v1/tasks", json=body)
        err_console.print(f"task {task['id']} {task['status']} (request id {request_id})")
        if wait:
            task = _wait(client, task, timeout_s)
    if json_output:
        print_json(task)
    elif wait:
        console.print(task_view(task), highlight=False)
    else:
        console.print(f"{task['id']} {task['status']}", highlight=False)
    if wait and task["status"] != "succeeded":
        fail(f"task {task['id']} ended {task['status']}: {task.get('error') or 'no error given'}")


def _scan_file(
    path: Path,
    base_url: str,
    headers: dict[str, str],
    config: dict[str, Any],
    batch_size: int,
    wait: bool,
    timeout_s: float,
    json_output: bool,
) -> None:
    lines = batch_scan.read_lines(path)
    if not lines:
        fail(f"{path} holds no domains")
    err_console.print(f"request id {headers['X-Request-ID']}", highlight=False)
    with httpx.Client(base_url=base_url, headers=headers, timeout=HTTP_TIMEOUT_S) as client:
        outcome = batch_scan.run(
            client, lines, config, batch_size=batch_size, wait=wait, timeout_s=timeout_s
        )
    if json_output:
        print_json(outcome.as_json())
    else:
        console.print(batch_scan.summary(outcome, wait), highlight=False)
    if not outcome.ok:
        fail(
            f"{len(outcome.refused)} line(s) refused, "
            f"{len(outcome.not_succeeded)} task(s) did not succeed"
        )
