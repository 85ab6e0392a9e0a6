"""/api/v1/batches: submit many domains with one scan config, and follow the batch."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from api_service import batch_service, waiting
from api_service.deps import (
    CurrentUser,
    HintsDep,
    RedisDep,
    RequestIdDep,
    SessionDep,
    SettingsDep,
    WaitersDep,
    checked_wait_s,
)
from api_service.routes.tasks import WaitQuery, checked_idempotency_key
from api_service.schemas import BatchCreate, BatchOut, BatchTaskOut, ErrorResponse

router = APIRouter(prefix="/api/v1/batches", tags=["batches"])

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 422, 503)
}
PAGE_SIZE_DEFAULT = 100
# A batch's tasks often end in bursts: one read per burst, not one per task.
SETTLE_S = 0.05


def batch_out(view: batch_service.BatchView) -> BatchOut:
    return BatchOut(
        id=view.batch.id,
        task_count=view.batch.task_count,
        config=view.batch.config,
        counts=view.progress.counts,
        done=view.done,
        created_at=view.batch.created_at,
        updated_at=view.progress.updated_at or view.batch.created_at,
        finished_at=view.progress.finished_at,
        tasks=[BatchTaskOut.model_validate(task) for task in view.tasks],
        next_cursor=view.next_cursor,
        callback_url=view.batch.callback_url,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BatchOut,
    responses={
        200: {"model": BatchOut, "description": "Replay of an idempotent batch"},
        **_ERRORS,
        429: {
            "model": ErrorResponse,
            "description": "The batch's tasks exceed this token's rate limit; "
            "`Retry-After` says when to retry",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
    },
)
async def create_batch(
    body: BatchCreate,
    response: Response,
    user: CurrentUser,
    session: SessionDep,
    redis: RedisDep,
    hints: HintsDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> BatchOut:
    """Accept up to `SCAN_BATCH_MAX_TASKS` domains: every task and its message are committed
    in one transaction, or, if any entry is invalid, nothing is (422 naming each entry)."""
    request = batch_service.validate_batch(body, settings, user)
    batch_id, created = await batch_service.create_batch(
        session,
        redis,
        settings,
        user,
        request,
        idempotency_key=checked_idempotency_key(idempotency_key),
        request_id=request_id,
    )
    if created:
        await hints.outbox()
    else:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/api/v1/batches/{batch_id}"
    view = await batch_service.read_batch(
        session, user, batch_id, limit=PAGE_SIZE_DEFAULT, cursor=None
    )
    return batch_out(view)


@router.get(
    "/{batch_id}",
    response_model=BatchOut,
    responses={**_ERRORS, **waiting.CLIENT_SHARE_RESPONSES},
)
async def get_batch(
    batch_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    waiters: WaitersDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = PAGE_SIZE_DEFAULT,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    wait: WaitQuery = 0,
) -> BatchOut:
    """The caller's batch: tasks by status, timestamps and one page of its tasks; with
    `wait`, once every task has ended or the wait is over."""
    wait_s = checked_wait_s(wait, settings)

    async def read() -> batch_service.BatchView:
        try:
            return await batch_service.read_batch(
                session, user, batch_id, limit=min(limit, settings.page_size_max), cursor=cursor
            )
        finally:
            # Between reads the request holds no connection, and the next read loads
            # fresh rows rather than the ones this session already holds.
            await session.close()

    view = await waiting.wait_until(
        waiters, batch_id, wait_s, read, lambda view: view.done, settle_s=SETTLE_S, client=user.id
    )
    return batch_out(view)
