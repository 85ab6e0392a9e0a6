"""Callback deliveries: a client's own under /api/v1/callbacks, every client's for
administrators under /api/v1/ops/callbacks (the same statements as `scanctl callbacks`
and the dashboard)."""

from __future__ import annotations

import enum
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from api_service import delivery_service, paging, responses
from api_service.deps import (
    AdminUser,
    CurrentUser,
    HintsDep,
    RedisDep,
    SessionDep,
    SettingsDep,
)
from api_service.schemas import CallbackTest, DeliveryDetail, DeliveryOut, DeliveryPage
from shared import create_rate
from shared.logging import get_logger

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/callbacks", tags=["callbacks"])
ops_router = APIRouter(prefix="/api/v1/ops/callbacks", tags=["ops"])


_errors = responses.errors
CLIENT_ERRORS = _errors(401, 404, 422, 503)
OPS_ERRORS = _errors(401, 403, 404, 422, 503)


async def charge_one_create(
    user: CurrentUser, redis: RedisDep, settings: SettingsDep, response: Response
) -> None:
    """A test event costs one create of the client's budget, with the RateLimit fields."""
    quota = await create_rate.take(redis, settings, user.id, cost=1)
    response.headers.update(create_rate.headers(quota))


class State(enum.StrEnum):
    PENDING = "pending"
    DEAD = "dead"
    DELIVERED = "delivered"
    ALL = "all"


StateQuery = Annotated[State, Query(description="dead includes those ended by a 410.")]
# A delivery's row id, not the keyset cursor of tasks and batches.
CursorQuery = Annotated[str | None, Query(max_length=30)]


async def get_page_query(
    settings: SettingsDep,
    state: StateQuery = State.ALL,
    limit: paging.LimitQuery = 20,
    cursor: CursorQuery = None,
) -> delivery_service.PageQuery:
    return delivery_service.PageQuery(state.value, paging.page_size(limit, settings), cursor)


# The same parameters for a client's own deliveries and an administrator's view of all.
PageQueryDep = Annotated[delivery_service.PageQuery, Depends(get_page_query)]


@router.get("/deliveries", response_model=DeliveryPage, responses=CLIENT_ERRORS)
async def list_own(user: CurrentUser, session: SessionDep, query: PageQueryDep) -> DeliveryPage:
    """Your callback deliveries, newest first, in pages."""
    return await delivery_service.list_page(session, user.id, query)


@router.get("/deliveries/{delivery_id}", response_model=DeliveryDetail, responses=CLIENT_ERRORS)
async def show_own(
    user: CurrentUser, session: SessionDep, delivery_id: uuid.UUID
) -> DeliveryDetail:
    """One of your deliveries with every try: status, error, duration and time."""
    return await delivery_service.show(session, user.id, delivery_id)


@router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryOut,
    responses={**CLIENT_ERRORS, **_errors(409)},
)
async def replay_own(
    user: CurrentUser, session: SessionDep, hints: HintsDep, delivery_id: uuid.UUID
) -> DeliveryOut:
    """Send one of your dead (or gone) deliveries again, now, with its tries reset and the
    same `webhook-id`; 409 if it is pending or delivered."""
    replayed = await delivery_service.replay(session, user.id, delivery_id)
    await hints.callbacks()
    log.info("callback_replayed", user_id=user.id, delivery_id=str(delivery_id))
    return replayed


@router.post(
    "/test",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryOut,
    responses={
        202: {"description": "Accepted for delivery", "headers": responses.RATE_LIMIT},
        **responses.rate_limited_create("Too many creates from this token"),
        404: CLIENT_ERRORS[404],
    },
    dependencies=[Depends(charge_one_create)],
)
async def send_test(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    hints: HintsDep,
    body: CallbackTest,
) -> DeliveryOut:
    """Send a signed `callback.test` event to `callback_url`, vetted and delivered as any
    callback is (charged to the rate limit as a create); follow it with GET
    /deliveries/{id}."""
    sent = await delivery_service.send_test(session, user, body.callback_url, settings)
    await hints.callbacks()
    return sent


@ops_router.get("/deliveries", response_model=DeliveryPage, responses=OPS_ERRORS)
async def list_all(_: AdminUser, session: SessionDep, query: PageQueryDep) -> DeliveryPage:
    """Every client's deliveries, newest first, in pages."""
    return await delivery_service.list_page(session, None, query)


@ops_router.get("/deliveries/{delivery_id}", response_model=DeliveryDetail, responses=OPS_ERRORS)
async def show_any(_: AdminUser, session: SessionDep, delivery_id: uuid.UUID) -> DeliveryDetail:
    """Any client's delivery with its tries and its owner."""
    return await delivery_service.show(session, None, delivery_id)


@ops_router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryOut,
    responses={**OPS_ERRORS, **_errors(409)},
)
async def replay_any(
    admin: AdminUser, session: SessionDep, hints: HintsDep, delivery_id: uuid.UUID
) -> DeliveryOut:
    """Send any client's dead (or gone) delivery again, as `scanctl callbacks replay` does."""
    replayed = await delivery_service.replay(session, None, delivery_id)
    await hints.callbacks()
    log.info("callback_replayed", admin_id=admin.id, delivery_id=str(delivery_id))
    return replayed
