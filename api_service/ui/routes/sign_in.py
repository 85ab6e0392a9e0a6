"""Sign-in with an admin token, exchanged for a session cookie; sign-out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.responses import Response

from api_service.ui import csrf
from api_service.ui.auth import UiActor
from api_service.ui.rendering import HOME, page, redirect, safe_next, set_cookie, ui_state
from api_service.ui.session import COOKIE_PATH, SESSION_COOKIE
from shared.db import users
from shared.db.models import User
from shared.logging import get_logger
from shared.tokens import hash_token

log = get_logger(__name__)
router = APIRouter(prefix="/ui")

MAX_TOKEN_CHARS = 512


def _login_form(
    request: Request, next_path: str, *, error: str | None = None, status_code: int = 200
) -> Response:
    """The sign-in page, with a fresh form token and its cookie."""
    token, cookie_value = ui_state(request).login_csrf.issue()
    response = page(
        request,
        "login.html",
        {"next": next_path, "csrf_token": token, "error": error, "title": "Sign in"},
        status_code=status_code,
    )
    set_cookie(response, request, csrf.LOGIN_COOKIE, cookie_value, csrf.LOGIN_FORM_TTL_S)
    return response


@router.get("/login")
async def login_page(
    request: Request, next_path: Annotated[str | None, Query(alias="next")] = None
) -> Response:
    return _login_form(request, safe_next(next_path))


async def _holder_of(request: Request, token: str) -> tuple[User, str] | None:
    """The active user whose token this is, with the token's hash; None for any other text."""
    given = token.strip()
    if not 0 < len(given) <= MAX_TOKEN_CHARS:
        return None
    token_hash = hash_token(given)
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as db:
        user = await users.get_active_user_by_token_hash(db, token_hash)
    return (user, token_hash) if user is not None else None


@router.post("/login")
async def login(
    request: Request,
    token: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next_path: Annotated[str, Form(alias="next")] = HOME,
) -> Response:
    """Exchange an admin token for a session; the token itself is never stored or echoed."""
    state = ui_state(request)
    target = safe_next(next_path)
    form_ok = csrf.from_this_site(request) and state.login_csrf.check(
        request.cookies.get(csrf.LOGIN_COOKIE), csrf_token
    )
    if not form_ok:
        return _login_form(
            request, target, error="The form expired. Please sign in again.", status_code=403
        )
    found = await _holder_of(request, token)
    if found is None:
        return _login_form(
            request, target, error="That token is invalid or revoked.", status_code=401
        )
    user, token_hash = found
    if not user.is_admin:
        log.info("ui_sign_in_refused", user_id=user.id)
        return _login_form(
            request, target, error="The dashboard is for administrators.", status_code=403
        )
    _, cookie_value = state.sessions.issue(user.id, token_hash)
    log.info("ui_signed_in", user_id=user.id)
    response = redirect(request, target)
    set_cookie(response, request, SESSION_COOKIE, cookie_value, state.sessions.ttl_s)
    response.delete_cookie(csrf.LOGIN_COOKIE, path=COOKIE_PATH)
    return response


@router.post("/logout")
async def logout(request: Request, admin: UiActor) -> Response:
    log.info("ui_signed_out", user_id=admin.user.id)
    response = redirect(request, f"{HOME}/login", notice="Signed out.")
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response
