"""Recurring schedules across clients: each one's next fire time and its latest run."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from api_service.deps import SessionDep
from api_service.ui.auth import UiAdmin
from api_service.ui.rendering import admin_page
from shared.db import schedules

router = APIRouter(prefix="/ui/schedules")

PAGE_SIZE = 200


@router.get("")
async def schedules_page(request: Request, admin: UiAdmin, session: SessionDep) -> Response:
    rows = await schedules.list_upcoming(session, PAGE_SIZE)
    context = {"rows": rows, "now": datetime.now(UTC), "limit": PAGE_SIZE}
    return admin_page(request, admin, "schedules.html", "Schedules", context, nav="schedules")
