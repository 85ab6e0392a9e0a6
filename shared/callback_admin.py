"""Actions on callback deliveries shared by the client API (its own deliveries), the admin
API, `scanctl callbacks` and the dashboard (every client's): one set of statements.

Like every operator action (`outbox_admin` too), each runs in the caller's transaction,
opened in sight at the call (`async with session.begin():`), and the caller hints the
relays once it has committed."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import deliveries
from shared.db.models import Delivery


def delivery_state(row: Delivery) -> str:
    """pending, delivered, gone (ended by a 410) or dead."""
    return deliveries.state_of(row)


async def replay(session: AsyncSession, owner: int | None, ids: Sequence[int] | None) -> int:
    """Make `owner`'s ended deliveries (`ids`, or every one if None; every client's when
    `owner` is None) due now with their tries reset, keeping their delivery id; the number
    replayed. Runs in the caller's transaction: the caller hints the relays after commit."""
    return await deliveries.replay(session, owner, ids)


async def replay_dead(session: AsyncSession, ids: Sequence[int] | None) -> int:
    """Make dead deliveries (`ids`, or every one if None) due now with their tries reset,
    keeping their delivery id, in the caller's transaction; the number replayed. The caller
    sends the callbacks hint after its commit."""
    return await replay(session, None, ids)


async def why_not_replayed(session: AsyncSession, owner: int | None, row_id: int) -> str:
    """Why replaying delivery `row_id` changed nothing: it is missing (or `owner`'s
    neighbour's), or not ended."""
    row = await deliveries.get(session, owner, row_id)
    if row is None:
        return f"no delivery {row_id}"
    return f"delivery {row_id} is {delivery_state(row)}, not dead: nothing to replay"
