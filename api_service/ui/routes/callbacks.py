"""Completion-callback deliveries: every one by state, paged, and replaying dead ones as
`scanctl callbacks replay` does."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from api_service.deps import HintsDep, SessionDep
from api_service.ui import reads
from api_service.ui.actions import UiAction
from api_service.ui.auth import UiAdmin
from api_service.ui.rendering import admin_page
from shared import callback_admin
from shared.db import callbacks, deliveries
from shared.logging import get_logger

log = get_logger(__name__)
router = APIRouter(prefix="/ui/callbacks")

PAGE_SIZE = 50
HERE = "/ui/callbacks"
DEFAULT_STATE = "all"
MAX_ROW_ID = 2**63 - 1  # a bigint


def page_url(state: str, before_id: int | None = None) -> str:
    params: dict[str, str | int] = {"state": state}
    if before_id is not None:
        params["before"] = before_id
    return f"{HERE}?{urlencode(params)}"


def _read_filter(state: str, before: str) -> tuple[str, int | None, list[str]]:
    """(state, the cursor, what was wrong with the query): bad values fall back to the
    newest deliveries in every state."""
    problems = []
    if state not in deliveries.STATES:
        problems.append(f"unknown state {state[:40]!r}: showing every state")
        state = DEFAULT_STATE
    before_id = None
    if before:
        if before.isdigit() and int(before) <= MAX_ROW_ID:
            before_id = int(before)
        else:
            problems.append("the page cursor is not valid: showing the newest deliveries")
    return state, before_id, problems


@router.get("")
async def callbacks_page(
    request: Request,
    admin: UiAdmin,
    session: SessionDep,
    state: str = DEFAULT_STATE,
    before: str = "",
) -> Response:
    state, before_id, problems = _read_filter(state, before)
    summary = await callbacks.summarize(session)
    rows = await reads.search_deliveries(session, state, limit=PAGE_SIZE + 1, before_id=before_id)
    older = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        older = page_url(state, rows[-1][0].id)
    here = page_url(state, before_id)
    context = {
        "summary": summary,
        "state": state,
        "states": deliveries.STATES,
        "problems": problems,
        "rows": rows,
        "newest": page_url(state) if before_id is not None else None,
        "older": older,
        "here": here,
    }
    return admin_page(request, admin, "callbacks.html", "Callbacks", context, nav="callbacks")


def _replayed_notice(count: int) -> str:
    deliveries = "delivery" if count == 1 else "deliveries"
    return f"Replayed {count} dead {deliveries}: due now, same delivery id."


@router.post("/{row_id}/replay")
async def replay_one(
    row_id: int, action: UiAction, session: SessionDep, hints: HintsDep
) -> Response:
    if not 0 < row_id <= MAX_ROW_ID:
        return action.answer(HERE, f"no delivery {row_id}", error=True)
    async with session.begin():
        replayed = await callback_admin.replay_dead(session, [row_id])
    if not replayed:
        why = await callback_admin.why_not_replayed(session, None, row_id)
        return action.answer(HERE, why, error=True)
    await hints.callbacks()
    log.info("ui_callbacks_replayed", delivery_rows=[row_id], admin_id=action.admin.user.id)
    return action.answer(HERE, _replayed_notice(1))


@router.post("/replay-dead")
async def replay_all(action: UiAction, session: SessionDep, hints: HintsDep) -> Response:
    async with session.begin():
        count = await callback_admin.replay_dead(session, None)
    if count:
        await hints.callbacks()
    log.info("ui_callbacks_replayed", rows=count, admin_id=action.admin.user.id)
    return action.answer(HERE, _replayed_notice(count))
