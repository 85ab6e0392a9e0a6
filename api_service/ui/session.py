"""Dashboard sessions: a signed cookie naming the admin, with an expiry and a CSRF token.

Signed, not stored: the dashboard keeps working while Redis (a safeguard only)
is down, and any API replica with the same key reads it. A session ends at its
expiry, at sign-out (the cookie is deleted), or as soon as its user's token is
revoked or replaced (the cookie carries a fingerprint of the token's hash).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

SESSION_COOKIE = "scan_ui_session"
COOKIE_PATH = "/ui"
_SALT = "scan-outbox.ui.session"
_GENERATED_KEY_BYTES = 32


def secret_key(settings: Settings) -> str:
    """SCAN_UI_SECRET_KEY, or a random key for this process (with a warning)."""
    if settings.ui_secret_key is not None:
        return settings.ui_secret_key.get_secret_value()
    log.warning(
        "ui_secret_key_generated",
        note="SCAN_UI_SECRET_KEY is unset: dashboard sign-ins last only as long as this "
        "process and are not shared with other API replicas",
    )
    return secrets.token_urlsafe(_GENERATED_KEY_BYTES)


def token_fingerprint(token_hash: str) -> str:
    """Changes when the user's token does; reveals nothing usable about it."""
    return hashlib.sha256(f"ui-session:{token_hash}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class UiSession:
    user_id: int
    fingerprint: str
    csrf_token: str
    expires_at: float


class SessionCodec:
    """Turns a UiSession into a cookie value and back, refusing forged or expired ones."""

    def __init__(self, key: str, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self._serializer = URLSafeSerializer(key, salt=_SALT)
        self.ttl_s = ttl_s
        self._clock = clock

    def issue(self, user_id: int, token_hash: str) -> tuple[UiSession, str]:
        """A new session (with a fresh CSRF token) and its cookie value."""
        session = UiSession(
            user_id=user_id,
            fingerprint=token_fingerprint(token_hash),
            csrf_token=secrets.token_urlsafe(32),
            expires_at=self._clock() + self.ttl_s,
        )
        value = self._serializer.dumps(
            [session.user_id, session.fingerprint, session.csrf_token, int(session.expires_at)]
        )
        return session, value

    def load(self, value: str | None) -> UiSession | None:
        """The session in a cookie value; None when absent, forged, malformed or expired."""
        if not value:
            return None
        try:
            user_id, fingerprint, csrf_token, expires_at = self._serializer.loads(value)
        except (BadSignature, ValueError, TypeError):
            return None
        fields_ok = (
            isinstance(user_id, int)
            and isinstance(fingerprint, str)
            and isinstance(csrf_token, str)
            and isinstance(expires_at, int)
        )
        if not fields_ok or expires_at <= self._clock():
            return None
        return UiSession(user_id, fingerprint, csrf_token, float(expires_at))
