"""/api/v1/batches: submit many domains with one scan config, and follow the batch."""

from __future__ import annotations

import enum
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from api_service import batch_service, idempotency, paging, responses, waiting
from api_service.deps import (
    CurrentUser,
    DispatchDep,
    HintsDep,
    SessionDep,
    SettingsDep,
    WaitersDep,
    checked_wait_s,
)
from api_service.schemas import (
    BatchCreate,
    BatchOut,
    BatchPage,
    BatchSummaryOut,
    BatchTaskOut,
    BatchTaskResultOut,
)
from shared import batch_export

router = APIRouter(prefix="/api/v1/batches", tags=["batches"])

PAGE_SIZE_DEFAULT = 100
# A batch's tasks often end in bursts: one read per burst, not one per task.
SETTLE_S = 0.05


class Include(enum.StrEnum):
    RESULT = "result"


def summary_out(summary: batch_service.BatchSummary) -> BatchSummaryOut:
    batch, progress = summary.batch, summary.progress
    return BatchSummaryOut(
        id=batch.id,
        task_count=batch.task_count,
        config=batch.config,
        counts=progress.counts,
        done=progress.finished_at is not None,
        created_at=batch.created_at,
        updated_at=progress.updated_at or batch.created_at,
        finished_at=progress.finished_at,
        callback_url=batch.callback_url,
    )


def batch_out(view: batch_service.BatchView, include: Include | None = None) -> BatchOut:
    task_out: type[BatchTaskOut] = BatchTaskResultOut if include is Include.RESULT else BatchTaskOut
    summary = summary_out(batch_service.BatchSummary(view.batch, view.progress))
    return BatchOut(
        **summary.model_dump(),
        tasks=[task_out.model_validate(task) for task in view.tasks],
        next_cursor=view.next_cursor,
    )


def batch_as_created(view: batch_service.BatchView) -> BatchOut:
    """The batch as its create answered: every task pending (an idempotent replay)."""
    answer = batch_out(view)
    pending = [
        task.model_copy(
            update={"status": "pending", "attempts": 0, "error": None, "finished_at": None}
        )
        for task in answer.tasks
    ]
    return answer.model_copy(
        update={
            "counts": {"pending": view.batch.task_count},
            "done": False,
            "updated_at": view.batch.created_at,
            "finished_at": None,
            "tasks": pending,
        }
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BatchOut,
    responses=responses.idempotent_create(
        "The batch's tasks exceed this token's rate limit; `Retry-After` says when to retry"
    ),
)
async def create_batch(
    body: BatchCreate,
    response: Response,
    user: CurrentUser,
    dispatch: DispatchDep,
    idempotency_key: idempotency.KeyHeader = None,
) -> BatchOut:
    """Accept up to `SCAN_BATCH_MAX_TASKS` domains: every task and its message are committed
    in one transaction, or, if any entry is invalid, nothing is (422 naming each entry)."""
    request = batch_service.validate_batch(body, dispatch.settings, user)
    key = idempotency.checked_key(idempotency_key)
    created = await batch_service.create_batch(dispatch, user, request, idempotency_key=key)
    location = f"/api/v1/batches/{created.id}"
    responses.answer_create(response, location, created.quota, replayed=created.replayed)
    view = await batch_service.read_batch(
        dispatch.session, user, created.id, limit=PAGE_SIZE_DEFAULT, cursor=None
    )
    if created.replayed:
        return batch_as_created(view)
    await dispatch.hints.outbox()
    return batch_out(view)


@router.get("", response_model=BatchPage, responses=responses.errors(401, 422, 503))
async def list_batches(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    limit: paging.LimitQuery = 20,
    cursor: paging.CursorQuery = None,
) -> BatchPage:
    """The caller's batches with their counts, newest first, one keyset page at a time."""
    page, next_cursor = await batch_service.list_batches(
        session, user, limit=paging.page_size(limit, settings), cursor=cursor
    )
    return BatchPage(items=[summary_out(summary) for summary in page], next_cursor=next_cursor)


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchOut,
    responses=responses.errors(401, 404, 422, 503),
)
async def cancel_batch(
    batch_id: uuid.UUID, user: CurrentUser, session: SessionDep, hints: HintsDep
) -> BatchOut:
    """Cancel every task of the batch that has not ended (running scans stop without a
    result); tasks already over keep their outcome. The batch as it is now."""
    if await batch_service.cancel_batch(session, user, batch_id):
        # Its waiters, and its callback once the last task ended.
        await hints.finished([(batch_id, batch_id)], callbacks=True)
    view = await batch_service.read_batch(
        session, user, batch_id, limit=PAGE_SIZE_DEFAULT, cursor=None
    )
    return batch_out(view)


@router.get(
    "/{batch_id}/results",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Every task of the batch in submission order, with its report: one "
            "JSON object per line (NDJSON), or CSV with the report's main facts in columns "
            "and the whole report in `result`.",
            "content": {"application/x-ndjson": {}, "text/csv": {}},
        },
        **responses.errors(401, 404, 422, 503),
    },
)
async def export_results(
    batch_id: uuid.UUID,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    export_format: Annotated[
        batch_export.ExportFormat | None,
        Query(alias="format", description="ndjson (default) or csv; or `Accept: text/csv`."),
    ] = None,
) -> StreamingResponse:
    """A whole batch's results in one streamed response, at flat memory whatever its size."""
    # The stream reads on connections of its own, chunk by chunk.
    await batch_service.get_user_batch(session, user, batch_id)
    if export_format is None:
        accepts_csv = "text/csv" in request.headers.get("accept", "")
        export_format = (
            batch_export.ExportFormat.CSV if accepts_csv else batch_export.ExportFormat.NDJSON
        )
    filename = f"batch-{batch_id}.{export_format.value}"
    return StreamingResponse(
        batch_export.stream(
            request.app.state.sessionmaker, batch_id, export_format, settings.export_chunk_rows
        ),
        media_type=export_format.media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get(
    "/{batch_id}",
    response_model=BatchOut,
    responses={**responses.errors(401, 404, 422, 503), **waiting.CLIENT_SHARE_RESPONSES},
)
async def get_batch(
    batch_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    waiters: WaitersDep,
    limit: paging.LongLimitQuery = PAGE_SIZE_DEFAULT,
    cursor: paging.CursorQuery = None,
    include: Annotated[
        Include | None, Query(description="`result`: each task with its report.")
    ] = None,
    wait: waiting.WaitQuery = 0,
) -> BatchOut:
    """The caller's batch: tasks by status, timestamps and one page of its tasks; with
    `wait`, once every task has ended or the wait is over."""
    wait_s = checked_wait_s(wait, settings)

    async def read() -> batch_service.BatchView:
        try:
            return await batch_service.read_batch(
                session, user, batch_id, limit=paging.page_size(limit, settings), cursor=cursor
            )
        finally:
            # The next read loads fresh rows rather than the ones this session already holds.
            session.expunge_all()

    view = await waiting.wait_until(
        waiters, batch_id, wait_s, read, lambda view: view.done, settle_s=SETTLE_S, client=user.id
    )
    return batch_out(view, include)
