"""The outbox: its backlog, its dead rows, and replaying them as `scanctl outbox replay` does."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from api_service.deps import HintsDep, SessionDep
from api_service.ui import reads
from api_service.ui.actions import UiAction
from api_service.ui.auth import UiAdmin
from api_service.ui.rendering import admin_page, redirect
from shared import outbox_admin
from shared.db import inspection, outbox
from shared.logging import get_logger

log = get_logger(__name__)
router = APIRouter(prefix="/ui/outbox")

ROWS_SHOWN = 100
HERE = "/ui/outbox"


@router.get("")
async def outbox_page(request: Request, admin: UiAdmin, session: SessionDep) -> Response:
    context = {
        "summary": await inspection.summarize_outbox(session),
        "dead": await inspection.list_outbox(session, limit=ROWS_SHOWN, state="dead"),
        "backlog": await reads.list_unpublished(session, ROWS_SHOWN),
        "rows_shown": ROWS_SHOWN,
    }
    return admin_page(request, admin, "outbox.html", "Outbox", context, nav="outbox")


def _replayed_notice(replayed: list[outbox.ReplayedMessage]) -> str:
    revived = sum(1 for row in replayed if row.task_revived)
    rows = "row" if len(replayed) == 1 else "rows"
    return f"Replayed {len(replayed)} dead {rows}; {revived} task(s) back to pending."


@router.post("/{outbox_id}/replay")
async def replay_one(
    outbox_id: int, action: UiAction, session: SessionDep, hints: HintsDep
) -> Response:
    async with session.begin():
        replayed = await outbox_admin.replay_dead(session, [outbox_id])
    if not replayed:
        why = await outbox_admin.why_not_replayed(session, outbox_id)
        return action.answer(HERE, why, error=True)
    await hints.outbox()
    log.info("ui_outbox_replayed", outbox_ids=[outbox_id], admin_id=action.admin.user.id)
    return action.answer(HERE, _replayed_notice(replayed))


@router.post("/replay-dead")
async def replay_all(action: UiAction, session: SessionDep, hints: HintsDep) -> Response:
    async with session.begin():
        replayed = await outbox_admin.replay_dead(session, None)
    if replayed:
        await hints.outbox()
    log.info("ui_outbox_replayed", rows=len(replayed), admin_id=action.admin.user.id)
    # The page's own button: no `back` to follow.
    return redirect(action.request, HERE, notice=_replayed_notice(replayed))
