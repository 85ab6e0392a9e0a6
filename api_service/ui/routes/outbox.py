"""The outbox: its backlog, its dead rows, and replaying them as `scanctl outbox replay` does."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from api_service.deps import HintsDep, SessionDep
from api_service.ui import reads
from api_service.ui.auth import UiActor, UiAdmin
from api_service.ui.rendering import page, redirect, safe_next
from shared import outbox_admin
from shared.db import inspection, outbox
from shared.logging import get_logger

log = get_logger(__name__)
router = APIRouter(prefix="/ui/outbox")

ROWS_SHOWN = 100
HERE = "/ui/outbox"
BackField = Annotated[str, Form(alias="back")]


@router.get("")
async def outbox_page(request: Request, admin: UiAdmin, session: SessionDep) -> Response:
    summary = await inspection.summarize_outbox(session)
    dead = await inspection.list_outbox(session, limit=ROWS_SHOWN, state="dead")
    backlog = await reads.list_unpublished(session, ROWS_SHOWN)
    context = {
        "admin": admin,
        "title": "Outbox",
        "nav": "outbox",
        "summary": summary,
        "dead": dead,
        "backlog": backlog,
        "rows_shown": ROWS_SHOWN,
    }
    return page(request, "outbox.html", context)


def _replayed_notice(replayed: list[outbox.ReplayedMessage]) -> str:
    revived = sum(1 for row in replayed if row.task_revived)
    rows = "row" if len(replayed) == 1 else "rows"
    return f"Replayed {len(replayed)} dead {rows}; {revived} task(s) back to pending."


@router.post("/{outbox_id}/replay")
async def replay_one(
    request: Request,
    outbox_id: int,
    admin: UiActor,
    session: SessionDep,
    hints: HintsDep,
    back: BackField = "",
) -> Response:
    target = safe_next(back or HERE)
    async with session.begin():
        replayed = await outbox_admin.replay_dead(session, [outbox_id])
    if replayed:
        await hints.outbox()
    else:
        why = await outbox_admin.why_not_replayed(session, outbox_id)
        return redirect(request, target, notice=why, error=True)
    log.info("ui_outbox_replayed", outbox_ids=[outbox_id], admin_id=admin.user.id)
    return redirect(request, target, notice=_replayed_notice(replayed))


@router.post("/replay-dead")
async def replay_all(
    request: Request, admin: UiActor, session: SessionDep, hints: HintsDep
) -> Response:
    async with session.begin():
        replayed = await outbox_admin.replay_dead(session, None)
    if replayed:
        await hints.outbox()
    log.info("ui_outbox_replayed", rows=len(replayed), admin_id=admin.user.id)
    return redirect(request, HERE, notice=_replayed_notice(replayed))
