"""CSRF defences of the dashboard's forms.

Every POST must carry the session's CSRF token in a hidden field, and must not
come from another site (Origin and Sec-Fetch-Site, when the browser sends them).
The sign-in form, which has no session yet, uses a signed double-submit cookie.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request

CSRF_FIELD = "csrf_token"
LOGIN_COOKIE = "scan_ui_login"
LOGIN_FORM_TTL_S = 30 * 60
_LOGIN_SALT = "scan-outbox.ui.login"
# What a browser sends for a request a page of this origin (or the user) started.
_OWN_FETCH_SITES = frozenset({"same-origin", "none"})


def tokens_match(expected: str, given: str | None) -> bool:
    """Constant-time comparison; an empty or missing token never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def from_this_site(request: Request) -> bool:
    """False when the browser says the request came from another origin."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in _OWN_FETCH_SITES:
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    # Behind a TLS-terminating proxy the scheme may differ; the host must not.
    return urlsplit(origin).netloc == request.headers.get("host", "")


class LoginCsrf:
    """Issues the sign-in form's token, as a signed cookie and a matching form field."""

    def __init__(self, key: str) -> None:
        self._serializer = URLSafeTimedSerializer(key, salt=_LOGIN_SALT)

    def issue(self) -> tuple[str, str]:
        """(the form field's token, the cookie value)."""
        token = secrets.token_urlsafe(32)
        return token, self._serializer.dumps(token)

    def check(self, cookie_value: str | None, given: str | None) -> bool:
        if not cookie_value:
            return False
        try:
            expected = self._serializer.loads(cookie_value, max_age=LOGIN_FORM_TTL_S)
        except BadSignature:
            return False
        return isinstance(expected, str) and tokens_match(expected, given)
