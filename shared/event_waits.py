"""Waiting for the first of several things to happen, for loops that sleep until woken."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def first_of(
    *events: asyncio.Event,
    tasks: Iterable[asyncio.Future[Any]] = (),
    timeout_s: float | None = None,
) -> None:
    """Return once any of `events` is set, any of `tasks` is done, or `timeout_s` has passed
    (None: no timeout); the tasks are neither awaited for their result nor cancelled."""
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait([*waits, *tasks], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
