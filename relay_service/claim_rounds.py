"""One tick of a claiming job: claims repeated while they come back full."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import SQLAlchemyError
from structlog.typing import FilteringBoundLogger


async def claim_until_short(
    claim: Callable[[], Awaitable[int]],
    full: int,
    stop: asyncio.Event,
    log: FilteringBoundLogger,
    failure_event: str,
) -> None:
    """Run `claim` (it returns the rows it handled) again while it handled `full` and `stop` is
    not set. A database error ends the tick with one `failure_event` warning instead of
    raising: the claim's transaction rolled back, and the next tick claims the rows again."""
    try:
        while not stop.is_set():
            if await claim() < full:
                return
    except (SQLAlchemyError, OSError) as exc:
        log.warning(failure_event, error=type(exc).__name__)
