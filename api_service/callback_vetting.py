"""Vetting a completion callback URL when it is submitted; delivery checks its addresses
again (`shared.callback_addresses`), since a name may resolve elsewhere by then."""

from __future__ import annotations

from urllib.parse import urlsplit

from api_service.domains import normalise_domain
from shared import host_lookup, ssrf
from shared.callback_addresses import allowed_addresses
from shared.errors import InvalidInput
from shared.settings import Settings

FIELD = "callback_url"
MAX_URL_CHARS = 2048


def _reject(reason: str) -> InvalidInput:
    return InvalidInput(reason, field=FIELD)


def _check_host(host: str, settings: Settings) -> None:
    if ssrf.is_ip(host):
        # An IP literal: allowed only if the guard allows it.
        if ssrf.allowed_addresses_or_none([host], allow_private=settings.allow_private) is None:
            raise _reject(f"must not point at a {ssrf.forbidden_reason(host)} address")
        return
    if settings.allow_private:
        return
    try:
        normalise_domain(host)
    except InvalidInput as exc:
        raise _reject(f"host {exc.message}") from exc


def check_callback_url(url: str, settings: Settings) -> str:
    """The URL as given if it may be called back: https (http only with
    SCAN_CALLBACK_ALLOW_HTTP), no credentials, a public host; InvalidInput naming why."""
    if len(url) > MAX_URL_CHARS:
        raise _reject(f"must be at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _reject("is not a valid URL") from exc
    allowed = ("https", "http") if settings.callback_allow_http else ("https",)
    if parts.scheme not in allowed:
        raise _reject(f"must be an {' or '.join(allowed)} URL")
    if parts.username is not None or parts.password is not None:
        raise _reject("must not carry credentials")
    if not parts.hostname:
        raise _reject("must name a host")
    if port == 0:
        raise _reject("must not use port 0")
    _check_host(parts.hostname, settings)
    return url


async def check_resolves_publicly(url: str, settings: Settings) -> None:
    """InvalidInput naming `callback_url` when its host resolves only to addresses the
    guard forbids; a host that does not resolve within `callback_submit_resolve_timeout_s`
    is let through (every delivery checks again). Network I/O: callers hold no database
    connection across it."""
    host = urlsplit(url).hostname or ""
    try:
        await allowed_addresses(host, settings, settings.callback_submit_resolve_timeout_s)
    except ssrf.ForbiddenTarget as exc:
        raise _reject(f"host {host} {exc.message.removeprefix('blocked by SSRF guard: ')}") from exc
    except host_lookup.LookupFailed:
        return
