"""Operator actions on the outbox, shared by `scanctl outbox` and the dashboard.

Like every operator action (`callback_admin` too), each runs in the caller's transaction,
opened in sight at the call (`async with session.begin():`), and the caller hints the
relays once it has committed."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import inspection, outbox
from shared.db.models import OutboxMessage


def outbox_state(row: OutboxMessage) -> str:
    """unpublished, published or dead."""
    if row.dead_at is not None:
        return "dead"
    return "published" if row.published_at is not None else "unpublished"


async def replay_dead(
    session: AsyncSession, ids: Sequence[int] | None
) -> list[outbox.ReplayedMessage]:
    """Make dead rows (`ids`, or every one if None) due again and put back to pending the
    tasks they failed, in the caller's transaction; the relays take them at their next
    poll, or sooner on the outbox hint the caller sends after its commit."""
    return await outbox.replay_dead_messages(session, ids)


async def why_not_replayed(session: AsyncSession, outbox_id: int) -> str:
    """Why replaying row `outbox_id` changed nothing: it is missing, or not dead."""
    row = await inspection.get_outbox_message(session, outbox_id)
    if row is None:
        return f"no outbox row {outbox_id}"
    return f"outbox row {outbox_id} is {outbox_state(row)}, not dead: nothing to replay"
