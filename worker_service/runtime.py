"""Per-process worker state, built lazily inside the worker's event loop."""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import safeguards, wakeups
from shared.db.engine import create_engine, create_sessionmaker
from shared.errors import ScanOutboxError
from shared.settings import Settings, get_settings
from worker_service.claimer import Claimer
from worker_service.completer import Completer
from worker_service.lease import LeaseKeeper

Scanner = Callable[[str, dict[str, Any], Settings], Awaitable[dict[str, Any]]]


class ScannerUnavailable(ScanOutboxError):
    """`SCAN_SCANNER` names nothing the worker can call: the worker refuses to start."""


def load_scanner(path: str) -> Scanner:
    """The callable `path` (`module:function`) names; ScannerUnavailable, saying why, if it
    is malformed, cannot be imported, or is not callable."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ScannerUnavailable(f"SCAN_SCANNER={path!r}: expected module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a missing module, or one that fails while importing
        reason = f"{type(exc).__name__}: {exc}"
        raise ScannerUnavailable(f"SCAN_SCANNER={path!r}: cannot import: {reason}") from exc
    target: object = module
    for name in attribute.split("."):
        target = getattr(target, name, None)
    if target is None:
        raise ScannerUnavailable(f"SCAN_SCANNER={path!r}: {module_name} has no {attribute}")
    if not callable(target):
        raise ScannerUnavailable(f"SCAN_SCANNER={path!r}: not callable")
    return cast(Scanner, target)


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
    # Finish hints after the final writes (shared/wakeups.py); none unless given.
    hints: wakeups.Hints = field(default_factory=lambda: wakeups.Hints(None))
    # Made on first use by `lifecycle.claimer_of`, `keeper_of` and `completer_of`, inside the
    # worker's event loop.
    claimer: Claimer | None = None
    keeper: LeaseKeeper | None = None
    completer: Completer | None = None


_runtime: WorkerRuntime | None = None


def get_runtime() -> WorkerRuntime:
    """The process's runtime; the engine and Redis client bind to the loop of the first caller."""
    global _runtime
    if _runtime is None:
        settings = get_settings()
        engine = create_engine(settings)
        _runtime = WorkerRuntime(
            settings,
            engine,
            create_sessionmaker(engine),
            load_scanner(settings.scanner),
            safeguards.create_redis(settings),
            hints=wakeups.Hints(wakeups.create_client(settings) if settings.wakeup_hints else None),
        )
    return _runtime
