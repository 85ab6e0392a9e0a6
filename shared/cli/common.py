"""What every scanctl command shares: running async code and failing with one clear line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import NoReturn, TypeVar

import typer
from rich.console import Console
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.engine import create_engine, create_sessionmaker
from shared.errors import ScanOutboxError
from shared.settings import Settings, get_settings

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; expected failures become one line and exit code 1, never a traceback."""

    async def main() -> T:
        return await factory()

    try:
        return asyncio.run(main())
    except ScanOutboxError as exc:
        fail(exc.message)
    except (OperationalError, InterfaceError, OSError) as exc:
        fail(f"the database is unreachable ({type(exc).__name__}); check DATABASE_URL")


@asynccontextmanager
async def db_session(settings: Settings | None = None) -> AsyncIterator[AsyncSession]:
    """A session on a short-lived engine, for one command."""
    engine = create_engine(settings or get_settings())
    try:
        async with create_sessionmaker(engine)() as session:
            yield session
    finally:
        await engine.dispose()
