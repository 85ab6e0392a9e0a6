"""The overview: is the outbox draining, who is running, and how fast."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.responses import Response

from api_service.deps import RedisDep, SettingsDep
from api_service.ui import views
from api_service.ui.auth import UiAdmin
from api_service.ui.rendering import admin_page

router = APIRouter(prefix="/ui")


@router.get("")
async def overview(
    request: Request, admin: UiAdmin, redis: RedisDep, settings: SettingsDep
) -> Response:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    data = await views.load_overview(sessionmaker, redis, settings)
    context = {"o": data, "refresh_s": settings.ui_refresh_s or None}
    return admin_page(request, admin, "overview.html", "Overview", context, nav="overview")
