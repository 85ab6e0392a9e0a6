"""`scanctl dev`: the whole stack on one machine, on embedded servers when no URLs are set."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from shared import devenv
from shared.cli.common import console, db_session, run_async
from shared.cli.processes import api_command, relay_command, worker_command
from shared.db import migrate, users
from shared.embedded import EmbeddedUrls, embedded_servers
from shared.settings import Settings, get_settings
from shared.tokens import hash_token, new_token

DEMO_USER = "demo"
STOP_TIMEOUT_S = 30.0


@contextlib.contextmanager
def _servers(data_dir: Path) -> Iterator[EmbeddedUrls | None]:
    """The embedded servers (Redis keeping its data) and their env file, for as long as they run."""
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        yield None
        return
    with embedded_servers(data_dir, persistent_redis=True) as urls:
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


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM (and SIGINT, whatever it came with) stops the stack the way Ctrl-C does."""
    raise KeyboardInterrupt


def run_stack(data_dir: Path) -> int:
    """Start servers if needed, migrate, print a demo token, run api+relay+worker until Ctrl-C.

    SIGTERM stops it the way Ctrl-C does, from the first moment: servers stopped, env file gone.
    SIGINT is handled even when it came ignored (a shell's background job inherits it so).
    """
    previous = {signum: signal.signal(signum, _interrupt) for signum in STOP_SIGNALS}
    try:
        return _run_stack(data_dir)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_stack(data_dir: Path) -> int:
    with _servers(data_dir) as urls:
        env = dict(os.environ)
        if urls is not None:
            env["DATABASE_URL"], env["REDIS_URL"] = urls.database_url, urls.redis_url
            os.environ.update(DATABASE_URL=urls.database_url, REDIS_URL=urls.redis_url)
            get_settings.cache_clear()
        settings = get_settings()
        migrate.upgrade(settings.database_url.get_secret_value())
        _print_welcome(settings, _rotate_demo_token(settings), data_dir if urls else None)
        # Each service in its own session: Ctrl-C reaches only this process, which
        # then stops every service with one SIGTERM, the signal each one handles
        # gracefully (a second signal makes Dramatiq kill its workers).
        children = [
            subprocess.Popen(command, env=env, start_new_session=True)
            for command in (
                api_command(settings.api_host, settings.api_port),
                relay_command(),
                worker_command(),
            )
        ]
        try:
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            console.print("[red]a service exited; stopping the others[/red]")
            return 1
        except KeyboardInterrupt:
            console.print("\nstopping…")
            return 0
        finally:
            _stop_all(children)
