"""The operations dashboard under /ui: server-rendered pages for administrators.

`install_ui(app, settings)` adds its routes, static files and error pages to the API app.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from itsdangerous import URLSafeTimedSerializer
from starlette.responses import Response

from api_service.ui.auth import SignInRequired, UiRefused
from api_service.ui.csrf import LoginCsrf
from api_service.ui.rendering import (
    HOME,
    STATIC_DIR,
    UiState,
    build_templates,
    page,
    redirect,
)
from api_service.ui.routes import callbacks, outbox, overview, schedules, sign_in, tasks
from api_service.ui.session import SessionCodec, secret_key
from shared.settings import Settings

_FLASH_SALT = "scan-outbox.ui.flash"


async def _on_sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    target = f"{HOME}/login"
    if exc.next_path != HOME:
        target += "?" + urlencode({"next": exc.next_path})
    return redirect(request, target)


async def _on_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, UiRefused)
    context = {"title": exc.title, "message": exc.message}
    return page(request, "error.html", context, status_code=exc.status)


def install_ui(app: FastAPI, settings: Settings) -> None:
    """Serve the dashboard from `app`; sessions are signed with SCAN_UI_SECRET_KEY."""
    key = secret_key(settings)
    app.state.ui = UiState(
        settings=settings,
        templates=build_templates(),
        sessions=SessionCodec(key, settings.ui_session_ttl_s),
        login_csrf=LoginCsrf(key),
        flash=URLSafeTimedSerializer(key, salt=_FLASH_SALT),
    )
    for module in (sign_in, overview, tasks, outbox, callbacks, schedules):
        app.include_router(module.router, include_in_schema=False)
    app.mount(f"{HOME}/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.add_exception_handler(SignInRequired, _on_sign_in_required)
    app.add_exception_handler(UiRefused, _on_refused)
