"""Rendering the dashboard: templates, filters, flash messages and hardened responses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from api_service.ui.csrf import LoginCsrf
from api_service.ui.session import COOKIE_PATH, SessionCodec
from shared.settings import Settings

if TYPE_CHECKING:
    from api_service.ui.auth import Admin

HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
HOME = "/ui"
FLASH_COOKIE = "scan_ui_flash"
FLASH_TTL_S = 60

# Pages load only their own stylesheet; charts are inline SVG markup; no script runs.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class UiState:
    """What the dashboard keeps on `app.state.ui` for the process's life."""

    settings: Settings
    templates: Jinja2Templates
    sessions: SessionCodec
    login_csrf: LoginCsrf
    flash: URLSafeTimedSerializer


def ui_state(request: Request) -> UiState:
    state: UiState = request.app.state.ui
    return state


def cookie_secure(request: Request, settings: Settings) -> bool:
    if settings.ui_cookie_secure is not None:
        return settings.ui_cookie_secure
    return request.url.scheme == "https"


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    """HttpOnly, SameSite=Lax, path /ui, Secure over HTTPS."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=cookie_secure(request, ui_state(request).settings),
    )


def harden(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def safe_next(value: str | None) -> str:
    """A dashboard path to go back to; anything else (another site, a scheme) is HOME."""
    if not value or any(char in value for char in "\\\r\n") or value.startswith("//"):
        return HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return HOME
    if parts.path != HOME and not parts.path.startswith(HOME + "/"):
        return HOME
    return value


def redirect(
    request: Request, url: str, *, notice: str | None = None, error: bool = False
) -> Response:
    """303 to `url`, carrying a one-time notice for the next page."""
    response = harden(RedirectResponse(url, status_code=303))
    if notice is not None:
        value = ui_state(request).flash.dumps([notice, error])
        set_cookie(response, request, FLASH_COOKIE, value, FLASH_TTL_S)
    return response


def _take_flash(request: Request) -> tuple[str, bool] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        notice, error = ui_state(request).flash.loads(raw, max_age=FLASH_TTL_S)
    except (BadSignature, ValueError, TypeError):
        return None
    return (str(notice), bool(error))


def page(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> Response:
    """The template rendered with the flash notice (then forgotten) and hardened headers."""
    state = ui_state(request)
    flash = _take_flash(request)
    full = {"flash": flash, "now": datetime.now(UTC), **context}
    response = state.templates.TemplateResponse(request, template, full, status_code=status_code)
    if FLASH_COOKIE in request.cookies:
        response.delete_cookie(FLASH_COOKIE, path=COOKIE_PATH)
    return harden(response)


def admin_page(
    request: Request,
    admin: Admin,
    template: str,
    title: str,
    context: dict[str, Any],
    *,
    nav: str | None = None,
    status_code: int = 200,
) -> Response:
    """A dashboard page for a signed-in admin: `title`, and `nav` marked in the menu."""
    full = {"admin": admin, "title": title, "nav": nav, **context}
    return page(request, template, full, status_code=status_code)


# --- template filters --------------------------------------------------------


def fmt_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def fmt_duration_s(seconds: float | None) -> str:
    """`850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`."""
    if seconds is None:
        return "—"
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{sign}{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(int(seconds), 60)
        return f"{sign}{minutes} min {rest:02d} s"
    hours, rest = divmod(int(seconds) // 60, 60)
    return f"{sign}{hours} h {rest:02d} min"


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def fmt_ago(value: datetime | None) -> str:
    if value is None:
        return "—"
    return fmt_duration_s((datetime.now(UTC) - value).total_seconds()) + " ago"


def url_host(url: str) -> str:
    """`host` or `host:port` of a URL: never its path, query or credentials, where a
    receiver may keep a token."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


def fmt_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def build_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    env = templates.env
    env.filters.update(
        time=fmt_time,
        duration=fmt_duration_s,
        ms=fmt_ms,
        ago=fmt_ago,
        pretty_json=fmt_json,
        host=url_host,
    )
    env.trim_blocks = True
    env.lstrip_blocks = True
    return templates
