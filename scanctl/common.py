"""What every scanctl command shares: running async code and failing with one clear line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from shared.errors import ScanOutboxError

# The clients, the engine and the settings are imported by the functions that use them: each
# command then pays only for the libraries it reaches (the database, Redis, or neither).
if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from rich.progress import Progress, TaskID
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared import wakeups
    from shared.settings import Settings

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
RowsOption = Annotated[int, typer.Option(min=1, max=10_000, help="Rows at most.")]

PIPED_WIDTH = 200


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    # Piped output has no width, and rich's default 80 columns would crop tables of ids.
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPED_WIDTH
    return console


console = _console()
err_console = _console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def parsed_id(value: str, kind: str) -> uuid.UUID:
    """`value` as the UUID it spells, else one line saying it is no `kind` id, and exit 1."""
    try:
        return uuid.UUID(value)
    except ValueError:
        fail(f"{value!r} is not a {kind} id (a UUID)")


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; expected failures become one line and exit code 1, never a traceback."""

    async def main() -> T:
        return await factory()

    try:
        return asyncio.run(main())
    except ScanOutboxError as exc:
        fail(exc.message)
    except Exception as exc:
        unreachable = _unreachable(exc)
        if unreachable is None:
            raise
        fail(unreachable)


def _unreachable(exc: Exception) -> str | None:
    """What a server-unreachable error says to the operator; None for any other error."""
    # Only a client library already imported can have raised its errors: importing one here
    # would cost a command that never used it the import.
    if "redis" in sys.modules:
        from redis.exceptions import RedisError

        if isinstance(exc, RedisError):
            return f"Redis is unreachable ({type(exc).__name__}); check REDIS_URL"
    database_errors: tuple[type[Exception], ...] = (OSError,)
    if "sqlalchemy" in sys.modules:
        from sqlalchemy.exc import InterfaceError, OperationalError

        database_errors = (OperationalError, InterfaceError, OSError)
    if isinstance(exc, database_errors):
        return f"the database is unreachable ({type(exc).__name__}); check DATABASE_URL"
    return None


def load_settings() -> Settings:
    """The environment's settings, or one line naming what is wrong (never the values).

    With no server URL in the environment, a running `scanctl dev`'s `.data/dev.env` gives them.
    """
    from pydantic import ValidationError

    from shared import devenv
    from shared.settings import Settings, get_settings

    dev_env = devenv.file_to_read(os.environ)
    try:
        if dev_env is not None:
            # Passed by their environment names (the fields' aliases); the rest as usual.
            urls: dict[str, Any] = devenv.read(dev_env)
            return Settings(**urls)
        return get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "settings"
        fail(f"invalid setting {where}: {first.get('msg', 'invalid value')}")


@asynccontextmanager
async def db_session(settings: Settings | None = None) -> AsyncIterator[AsyncSession]:
    """A session on a short-lived engine, for one command."""
    from shared.db.engine import create_engine, create_sessionmaker

    engine = create_engine(settings or load_settings())
    try:
        async with create_sessionmaker(engine)() as session:
            yield session
    finally:
        await engine.dispose()


async def send_hint(send: Callable[[wakeups.Hints], Awaitable[None]]) -> None:
    """One wake-up hint from a command, after its commit; Redis away costs the relays'
    next poll, nothing else."""
    from shared import wakeups

    settings = load_settings()
    hints = wakeups.Hints(wakeups.create_client(settings) if settings.wakeup_hints else None)
    await send(hints)
    await hints.aclose()


@asynccontextmanager
async def db_and_redis(
    settings: Settings,
) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], aioredis.Redis]]:
    """A sessionmaker and a Redis client for one command, both closed on exit."""
    from shared import redis_clients, safeguards
    from shared.db.engine import create_engine, create_sessionmaker

    engine = create_engine(settings)
    redis = safeguards.create_redis(settings)
    try:
        yield create_sessionmaker(engine), redis
    finally:
        await redis_clients.aclose(redis)
        await engine.dispose()


def print_json(data: Any) -> None:
    """Plain JSON on stdout: no colours, no wrapping, whatever the terminal."""
    typer.echo(json.dumps(data, indent=2, default=str))


class BarProgress:
    """A rich progress display on stderr, one line per step; stdout stays clean for the output."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None
        self._done = 0

    def step(self, description: str, total: int | None = None) -> None:
        self.finish()
        self._task, self._done = self._progress.add_task(description, total=total), 0

    def advance(self, amount: int = 1) -> None:
        if self._task is not None:
            self._done += amount
            self._progress.advance(self._task, amount)

    def finish(self) -> None:
        """Show the current step as complete, whatever total it announced."""
        if self._task is not None:
            self._progress.update(self._task, total=self._done, completed=self._done)
            self._task = None


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[BarProgress]:
    """Progress for long operations; pass enabled=False under --json."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

    columns = (
        SpinnerColumn(finished_text="[green]✓[/green]"),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}"),
    )
    with Progress(*columns, console=err_console, disable=not enabled) as progress:
        sink = BarProgress(progress)
        yield sink
        sink.finish()
