"""Per-process worker state, built lazily inside the worker's event loop."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import safeguards
from shared.db.engine import create_engine, create_sessionmaker
from shared.settings import Settings, get_settings

Scanner = Callable[[str, dict[str, Any], Settings], Awaitable[dict[str, Any]]]


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class WorkerRuntime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    scanner: Scanner
    # The safeguard Redis (the existence marker), never the broker's.
    redis: aioredis.Redis
    owner: str = field(default_factory=worker_identity)


_runtime: WorkerRuntime | None = None


def get_runtime() -> WorkerRuntime:
    """The process's runtime; the engine and Redis client bind to the loop of the first caller."""
    global _runtime
    if _runtime is None:
        from worker_service.scanner import scan_domain

        settings = get_settings()
        engine = create_engine(settings)
        _runtime = WorkerRuntime(
            settings,
            engine,
            create_sessionmaker(engine),
            scan_domain,
            safeguards.create_redis(settings),
        )
    return _runtime
