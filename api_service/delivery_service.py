"""Callback deliveries through the API: a client's own (`owner` its id) or, for an
administrator, every client's (`owner` None). Another client's delivery is 404, exactly
as a missing one, so ids reveal nothing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api_service import task_service
from api_service.schemas import DeliveryAttemptOut, DeliveryDetail, DeliveryOut, DeliveryPage
from shared import callback_admin
from shared.db import deliveries
from shared.db.engine import single_statement
from shared.db.models import Delivery, User
from shared.errors import InvalidInput, InvalidState, NotFound
from shared.settings import Settings

MAX_ROW_ID = 2**63 - 1


def delivery_out(row: Delivery) -> DeliveryOut:
    state = deliveries.state_of(row)
    return DeliveryOut(
        id=row.delivery_id,
        event=str(row.payload.get("event", "")),
        state=state,
        task_id=row.task_id,
        batch_id=row.batch_id,
        url=row.url,
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=row.last_error,
        created_at=row.created_at,
        next_try_at=row.available_at if state == "pending" else None,
        delivered_at=row.delivered_at,
        dead_at=row.dead_at,
    )


def _cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit() or not 0 < int(cursor) <= MAX_ROW_ID:
        raise InvalidInput("is not a cursor this API returned", field="cursor")
    return int(cursor)


@dataclass(frozen=True)
class PageQuery:
    """Which page of deliveries: those in `state` (or `all`), `size` of them, older than the
    `cursor` a previous page gave."""

    state: str
    size: int
    cursor: str | None


async def list_page(session: AsyncSession, owner: int | None, query: PageQuery) -> DeliveryPage:
    """One page, newest first, and the cursor of the next page if there is one."""
    after = _cursor(query.cursor)
    limit = query.size
    async with single_statement(session):
        rows = await deliveries.list_page(session, owner, query.state, limit + 1, after)
    page = rows[:limit]
    next_cursor = str(page[-1].id) if len(rows) > limit else None
    return DeliveryPage(items=[delivery_out(row) for row in page], next_cursor=next_cursor)


async def _find(session: AsyncSession, owner: int | None, delivery_id: uuid.UUID) -> Delivery:
    stmt = select(Delivery.id).where(Delivery.delivery_id == delivery_id)
    row_id = (await session.execute(stmt)).scalar_one_or_none()
    row = None if row_id is None else await deliveries.get(session, owner, row_id)
    if row is None:
        raise NotFound(f"no delivery {delivery_id}")
    return row


async def show(session: AsyncSession, owner: int | None, delivery_id: uuid.UUID) -> DeliveryDetail:
    async with session.begin():
        row = await _find(session, owner, delivery_id)
        tries = await deliveries.attempts_of(session, row.id)
    return DeliveryDetail(
        **delivery_out(row).model_dump(),
        user_id=row.user_id if owner is None else None,
        attempt_log=[DeliveryAttemptOut.model_validate(attempt) for attempt in tries],
    )


async def replay(session: AsyncSession, owner: int | None, delivery_id: uuid.UUID) -> DeliveryOut:
    """Send an ended (dead or gone) delivery again, its tries reset; 409 for any other."""
    async with session.begin():
        row = await _find(session, owner, delivery_id)
        replayed = await callback_admin.replay(session, owner, [row.id])
        if not replayed:
            state = deliveries.state_of(row)
            raise InvalidState(
                f"the delivery is {state}, not dead: nothing to replay", current_status=state
            )
        await session.refresh(row)
    return delivery_out(row)


async def send_test(session: AsyncSession, user: User, url: str, settings: Settings) -> DeliveryOut:
    """A `callback.test` delivery to `url`, vetted as a task's callback URL is, sent by the
    relays as every delivery is (the same guard at each try, the same per-client bounds)."""
    task_service.checked_callback(user, url, settings)
    await task_service.check_callback_host(url, settings)
    async with session.begin():
        row = await deliveries.insert_test(session, user.id, url)
    return delivery_out(row)
