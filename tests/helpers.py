"""Small builders shared by the integration and end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service.app import create_app
from shared.db import users
from shared.db.models import OutboxMessage, Task, User
from shared.settings import Settings
from shared.tokens import hash_token, new_token

T = TypeVar("T")


async def make_user(
    sessionmaker: async_sessionmaker[AsyncSession], name: str = "alice", admin: bool = False
) -> tuple[User, str]:
    token = new_token()
    async with sessionmaker() as session, session.begin():
        user = await users.insert_user(session, name, hash_token(token), admin)
    return user, token


async def count_rows(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    """(tasks, outbox rows) in the database."""
    async with sessionmaker() as session:
        tasks = (await session.execute(select(func.count()).select_from(Task))).scalar_one()
        outbox = (
            await session.execute(select(func.count()).select_from(OutboxMessage))
        ).scalar_one()
    return tasks, outbox


def scanctl(
    *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """`scanctl ARGS` as its own process, the way an operator or a script runs it."""
    return subprocess.run(
        [sys.executable, "-m", "scanctl.main", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def wait_until(
    check: Callable[[], T | None], deadline_s: float, what: str, every_s: float = 0.05
) -> T:
    """Poll `check` until it returns a truthy value, or fail naming `what`."""
    end = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(every_s)


async def eventually(
    check: Callable[[], Any], what: str, *, deadline_s: float = 10.0, every_s: float = 0.02
) -> Any:
    """Poll `check` (sync, or returning an awaitable) until its value is truthy and return it,
    or fail naming `what`; the event loop keeps running between polls."""
    end = time.monotonic() + deadline_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        await asyncio.sleep(every_s)


@contextlib.asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API app with its lifespan, called in process over ASGI."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def published(pubsub: Any, quiet_s: float = 0.5) -> list[tuple[str, str]]:
    """(channel, payload) of every message the (blocking) `pubsub` receives until none came
    for `quiet_s`, the event loop running between looks so that hints sent in the
    background go out (subscribe confirmations, which read as None, are skipped)."""
    received: list[tuple[str, str]] = []
    quiet_until = time.monotonic() + quiet_s
    while time.monotonic() < quiet_until:
        message = pubsub.get_message(timeout=0.0)
        if message is None:
            await asyncio.sleep(0.01)
        elif message["type"] == "message":
            received.append((message["channel"].decode(), message["data"].decode()))
            quiet_until = time.monotonic() + quiet_s
    return received
