"""Keeping the leases of a process's runs alive, and noticing when one is gone.

One keeper per process renews every lease it holds in one statement each third of the lease
(`shared.db.leases`): hundreds of scans in flight cost one write per interval, not one each.
A run holds its lease from the claim to its final write, so a final write that waits its turn
in a batch keeps its lease too. While the scan runs, the run is fenced: when a renewal finds
its lease gone (cancelled, or taken over after this process stalled), the scan is cancelled and
the run sees LeaseLost.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import leases
from shared.db.engine import single_statement
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)


class LeaseLost(Exception):
    """The task is no longer this worker's: it was cancelled, or another worker took it over."""


@dataclass(eq=False)
class HeldLease:
    """A run's lease while the keeper renews it; `fence()` guards the scan."""

    task_id: uuid.UUID
    token: uuid.UUID
    run: asyncio.Task[Any] | None = field(default_factory=asyncio.current_task)
    fenced: bool = False
    lost: bool = False

    def fence(self) -> _Fence:
        """An `async with` block that a lost lease cancels, raising LeaseLost."""
        return _Fence(self)


class _Fence:
    def __init__(self, held: HeldLease) -> None:
        self.held = held

    async def __aenter__(self) -> None:
        self.held.fenced = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        held = self.held
        held.fenced = False
        # The keeper's cancellation, and no other (a worker stopping cancels runs too).
        run = held.run
        cancelled_for_loss = held.lost and exc_type is asyncio.CancelledError
        if cancelled_for_loss and run is not None and run.uncancel() == 0:
            raise LeaseLost from None


class LeaseKeeper:
    """Renews the leases its runs hold while any are held; made inside the worker's loop."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.held: dict[uuid.UUID, HeldLease] = {}
        self.renewer: asyncio.Task[None] | None = None
        self.sleeping = False

    def hold(self, task_id: uuid.UUID, token: uuid.UUID) -> HeldLease:
        """Renew the lease of `task_id` under `token` from now until `release`."""
        held = HeldLease(task_id, token)
        self.held[task_id] = held
        if self.renewer is None or self.renewer.done():
            self.renewer = asyncio.get_running_loop().create_task(self._renew_while_held())
        return held

    def release(self, held: HeldLease) -> None:
        """Renew it no more (the run wrote its end, or gave the task up)."""
        if self.held.get(held.task_id) is held:
            del self.held[held.task_id]
        # An idle worker keeps no timer running.
        if not self.held and self.renewer is not None and self.sleeping:
            self.renewer.cancel()
            self.renewer = None

    async def _renew_while_held(self) -> None:
        while self.held:
            self.sleeping = True
            try:
                await asyncio.sleep(self.settings.worker_lease_s / 3)
            finally:
                self.sleeping = False
            if self.held:
                await self._renew_all()

    async def _renew_all(self) -> None:
        """One renewal of every held lease; a run whose lease is gone is cancelled if its scan
        still runs. A renewal that cannot reach the database is tried again next turn: every
        write of a run is fenced by its token anyway."""
        snapshot = dict(self.held)
        try:
            async with self.sessionmaker() as session, single_statement(session):
                lost = await leases.renew_leases(
                    session,
                    {task_id: held.token for task_id, held in snapshot.items()},
                    self.settings.worker_lease_s,
                )
        except (SQLAlchemyError, OSError) as exc:
            log.warning("lease_renewal_failed", leases=len(snapshot), error=type(exc).__name__)
            return
        except Exception:
            # Anything else is a bug; the keeper must outlive it, or every lease would lapse.
            log.exception("lease_renewal_crashed", leases=len(snapshot))
            return
        for task_id in lost:
            held = snapshot[task_id]
            held.lost = True
            if held.fenced and held.run is not None:
                held.run.cancel()
