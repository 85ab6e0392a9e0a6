"""`scanctl dev`: the whole stack on one machine, on embedded servers when no URLs are set."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from scanctl.common import console, db_session, run_async
from scanctl.processes import api_command, relay_command, worker_command
from shared import devenv
from shared.db import migrate, users
from shared.embedded import EmbeddedUrls, embedded_missing
from shared.process_tree import ProcessTree, stop_trees
from shared.settings import Settings, get_settings
from shared.tokens import hash_token, new_token

DEMO_USER = "demo"


def _given(*names: str) -> str | None:
    return next((value for name in names if (value := os.environ.get(name))), None)


@contextlib.contextmanager
def _servers(data_dir: Path) -> Iterator[EmbeddedUrls | None]:
    """The servers the environment names, embedded ones (Redis keeping its data) for those it
    does not, and their env file, for as long as they run; None when it names both."""
    database_url = _given("DATABASE_URL", "SCAN_DATABASE_URL")
    redis_url = _given("REDIS_URL", "SCAN_REDIS_URL")
    if database_url and redis_url:
        yield None
        return
    if database_url or redis_url:
        given, embedded = ("DATABASE_URL", "Redis") if database_url else ("REDIS_URL", "PostgreSQL")
        _say(f"using {given} from the environment; starting an embedded {embedded} for the other")
    with embedded_missing(data_dir, database_url=database_url, redis_url=redis_url) as urls:
        env_file = devenv.write(data_dir, urls)
        try:
            yield urls
        finally:
            # Gone before the servers stop: a file that exists names servers that answer.
            env_file.unlink(missing_ok=True)


def _rotate_demo_token(settings: Settings) -> str:
    token = new_token()

    async def store() -> None:
        async with db_session(settings) as session, session.begin():
            await users.set_user_token(session, DEMO_USER, hash_token(token), is_admin=True)

    run_async(store)
    return token


def _shown(path: Path) -> str:
    """`path` relative to the current folder when it is inside it, as a person would type it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _print_other_terminals(data_dir: Path) -> None:
    env_file = devenv.env_file(data_dir)
    scanctl = _shown(Path(sys.executable).parent / "scanctl")
    if env_file == devenv.env_file(devenv.DEFAULT_DATA_DIR.resolve()):
        console.print(
            f"From another terminal in this folder, scanctl finds this stack ({_shown(env_file)}):"
            f"\n  {scanctl} status",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"Anything else reaches it with: set -a; . {env_file}; set +a\n",
        highlight=False,
        soft_wrap=True,
    )


def _print_welcome(settings: Settings, token: str, data_dir: Path | None) -> None:
    base = f"http://{settings.api_host}:{settings.api_port}"
    console.print(f"\n[bold]scan-outbox is starting[/bold] on {base}")
    console.print(f"demo user token (admin, new on every start): [bold]{token}[/bold]\n")
    console.print("Submit a scan and read it back:", highlight=False)
    console.print(
        f"  TOKEN={token}\n"
        f'  curl -s -X POST {base}/api/v1/tasks -H "Authorization: Bearer $TOKEN" '
        "-H 'Content-Type: application/json' -d '{\"target_domain\": \"example.com\"}'\n"
        f'  curl -s {base}/api/v1/tasks/<id> -H "Authorization: Bearer $TOKEN"\n',
        highlight=False,
        soft_wrap=True,
    )
    if data_dir is not None:
        _print_other_terminals(data_dir)
    console.print("Press Ctrl-C to stop everything.\n")


# Between two looks at the services while they run; also how soon a signal is acted on.
WATCH_S = 0.5
# How often the processes each service started are noted: a process that leaves its
# service's process group is still stopped (psutil walks /proc, ~4 ms a service).
NOTE_EVERY_S = 5.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """What the stop signals asked: the first to stop, a later one to stop without waiting."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()

    def handle(self, _signum: int, _frame: object) -> None:
        # Only flags: an exception raised wherever the signal lands could cut a start or a
        # stop in half and leave a process that nothing remembers.
        (self.hurry if self.stop.is_set() else self.stop).set()


def _say(message: str) -> None:
    # The terminal may be gone (SIGHUP): the stop goes on all the same.
    with contextlib.suppress(OSError):
        console.print(message)


def run_stack(data_dir: Path) -> int:
    """Start servers if needed, migrate, print a demo token, run api+relay+worker until Ctrl-C,
    SIGTERM, SIGHUP or a service exits (then 1).

    Every process it started is gone when it returns: each service gets SIGTERM and
    `SCAN_DEV_STOP_GRACE_S`, then what is left of its process tree gets SIGKILL (a second
    signal skips the wait); then the servers stop. A signal during the start is acted on
    once the step in hand ends. SIGINT is handled even when it came ignored (a shell's
    background job inherits it so).
    """
    request = StopRequest()
    previous = {signum: signal.signal(signum, request.handle) for signum in STOP_SIGNALS}
    try:
        return _run_stack(data_dir, request)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_stack(data_dir: Path, request: StopRequest) -> int:
    # The servers stop in this block's exit whatever happens inside it, after the services.
    with _servers(data_dir) as urls:
        env = dict(os.environ)
        if urls is not None:
            env["DATABASE_URL"], env["REDIS_URL"] = urls.database_url, urls.redis_url
            os.environ.update(DATABASE_URL=urls.database_url, REDIS_URL=urls.redis_url)
            get_settings.cache_clear()
        settings = get_settings()
        if request.stop.is_set():
            return 0
        migrate.upgrade(settings.direct_url)
        _print_welcome(settings, _rotate_demo_token(settings), data_dir if urls else None)
        services: list[ProcessTree] = []
        try:
            # Each service in its own session: Ctrl-C reaches only this process, which
            # then stops each service with one SIGTERM, the signal each one handles
            # gracefully (a second signal makes Dramatiq kill its workers).
            for command in (
                api_command(settings.api_host, settings.api_port),
                relay_command(),
                worker_command(),
            ):
                if request.stop.is_set():
                    return 0
                services.append(ProcessTree.start(command, env=env))
            return _watch(services, request)
        finally:
            _say("\nstopping…")
            if not stop_trees(services, settings.dev_stop_grace_s, request.hurry):
                _say("[red]some processes could not be killed[/red]")


def _watch(services: list[ProcessTree], request: StopRequest) -> int:
    """Until a stop is asked (0) or a service exits (1)."""
    noted_at = 0.0
    while not request.stop.wait(WATCH_S):
        if any(service.popen.poll() is not None for service in services):
            _say("[red]a service exited; stopping the others[/red]")
            return 1
        if time.monotonic() - noted_at >= NOTE_EVERY_S:
            noted_at = time.monotonic()
            for service in services:
                service.note()
    return 0
