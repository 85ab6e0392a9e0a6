"""Which given servers the suite may wipe: it truncates every table and flushes Redis.

A server looks disposable when it is on this machine (a loopback address or a Unix
socket) and, for PostgreSQL, its database is named for tests (`test` in the name).
Redis has no names, so only its host is judged. Embedded servers, started when no
URL is given, are always disposable; `SCAN_TEST_ALLOW_DESTRUCTIVE=1` allows any.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ALLOW_VARIABLE = "SCAN_TEST_ALLOW_DESTRUCTIVE"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _is_local(host: str | None) -> bool:
    # An empty host means the driver's default Unix socket; a path is a socket folder.
    return not host or host.startswith("/") or host.lower() in LOOPBACK_HOSTS


def database_refusal(url: str) -> str | None:
    """Why the PostgreSQL at `url` does not look disposable, or None when it does."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "it is not a database URL"
    query_host = parsed.query.get("host")
    host = parsed.host or (query_host if isinstance(query_host, str) else None)
    if not _is_local(host):
        return f"its host {host!r} is not 127.0.0.1, localhost, ::1 or a Unix socket"
    if "test" not in (parsed.database or "").lower():
        return f"its database name {parsed.database!r} does not contain 'test'"
    return None


def redis_refusal(url: str) -> str | None:
    """Why the Redis at `url` does not look disposable, or None when it does."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return None
    if parts.scheme not in {"redis", "rediss"}:
        return "it is not a redis://, rediss:// or unix:// URL"
    if not parts.hostname or not _is_local(parts.hostname):
        return f"its host {parts.hostname!r} is not 127.0.0.1, localhost or ::1"
    return None


def _shown(url: str) -> str:
    """`url` without its password: the message is printed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def refusal(environ: Mapping[str, str]) -> str | None:
    """The message refusing the run for the servers `environ` names, or None to go ahead."""
    if environ.get(ALLOW_VARIABLE) == "1":
        return None
    reasons = []
    for name, judge in (("DATABASE_URL", database_refusal), ("REDIS_URL", redis_refusal)):
        url = environ.get(name)
        reason = judge(url) if url else None
        if reason:
            reasons.append(f"{name}={_shown(url or '')}: {reason}")
    if not reasons:
        return None
    return (
        "refusing to run the tests: they truncate every table and flush Redis, and "
        + "; ".join(reasons)
        + ". A disposable server is on 127.0.0.1, localhost, ::1 or a Unix socket, with a"
        " PostgreSQL database whose name contains 'test' (or unset both URLs: the tests start"
        f" their own servers). Set {ALLOW_VARIABLE}=1 to run against these servers anyway."
    )
