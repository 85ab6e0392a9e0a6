"""Operator actions on callback deliveries, shared by `scanctl callbacks` and the dashboard."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from shared import wakeups
from shared.db import callbacks
from shared.db.models import Delivery


def delivery_state(row: Delivery) -> str:
    """pending, delivered or dead."""
    if row.delivered_at is not None:
        return "delivered"
    return "dead" if row.dead_at is not None else "pending"


async def replay_dead(
    session: AsyncSession, ids: Sequence[int] | None, hints: wakeups.Hints | None = None
) -> int:
    """Make dead deliveries (`ids`, or every one if None) due now with their tries reset,
    keeping their delivery id, in one transaction, then hint the relays (`hints`); the
    number replayed.

    `session` must have no transaction open.
    """
    async with session.begin():
        count = await callbacks.replay(session, ids)
    if count and hints is not None:
        await hints.callbacks()
    return count


async def why_not_replayed(session: AsyncSession, row_id: int) -> str:
    """Why replaying delivery `row_id` changed nothing: it is missing, or not dead."""
    row = await callbacks.get_delivery(session, row_id)
    if row is None:
        return f"no delivery {row_id}"
    return f"delivery {row_id} is {delivery_state(row)}, not dead: nothing to replay"
