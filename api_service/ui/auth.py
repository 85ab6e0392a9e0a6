"""Who may use the dashboard: a signed-in admin, and for every action, a same-site form
carrying the session's CSRF token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service.ui import csrf
from api_service.ui.rendering import HOME, ui_state
from api_service.ui.session import SESSION_COOKIE, UiSession, token_fingerprint
from shared.db import users
from shared.db.models import User


class SignInRequired(Exception):
    """No valid session: the browser is sent to the sign-in page, then back to `next_path`."""

    def __init__(self, next_path: str) -> None:
        super().__init__("sign-in required")
        self.next_path = next_path


class UiRefused(Exception):
    """An HTML error page with `status`."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def not_admin() -> UiRefused:
    return UiRefused(403, "Administrators only", "The dashboard is for administrators.")


def stale_form() -> UiRefused:
    return UiRefused(
        403,
        "Form refused",
        "This form was stale or sent from another site. Reload the page and try again.",
    )


@dataclass(frozen=True)
class Admin:
    user: User
    session: UiSession

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token


async def _session_user(request: Request, session: UiSession) -> User | None:
    # Its own short session, so a route's session starts with no transaction open.
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as db:
        user = await users.get_user(db, session.user_id)
    if user is None or user.revoked_at is not None:
        return None
    if token_fingerprint(user.token_hash) != session.fingerprint:
        return None  # the token was replaced since this sign-in
    return user


def _back_here(request: Request) -> str:
    if request.method != "GET":
        return HOME
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def current_admin(request: Request) -> Admin:
    """The signed-in admin; SignInRequired without a live session, 403 for a non-admin."""
    session = ui_state(request).sessions.load(request.cookies.get(SESSION_COOKIE))
    user = await _session_user(request, session) if session else None
    if session is None or user is None:
        raise SignInRequired(_back_here(request))
    if not user.is_admin:
        raise not_admin()
    return Admin(user, session)


async def acting_admin(request: Request, admin: Annotated[Admin, Depends(current_admin)]) -> Admin:
    """`current_admin`, for a POST from this site carrying the session's CSRF token."""
    if not csrf.from_this_site(request):
        raise stale_form()
    form = await request.form()
    given = form.get(csrf.CSRF_FIELD)
    if not isinstance(given, str) or not csrf.tokens_match(admin.csrf_token, given):
        raise stale_form()
    return admin


UiAdmin = Annotated[Admin, Depends(current_admin)]
UiActor = Annotated[Admin, Depends(acting_admin)]
