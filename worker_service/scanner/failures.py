"""Short, stable reasons for failed requests, read from an exception and its causes."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, and so on, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_timeout(exc: BaseException) -> bool:
    return any(isinstance(cause, httpx.TimeoutException | TimeoutError) for cause in causes(exc))


def certificate_error(exc: BaseException) -> str | None:
    """The verifier's reason when `exc` comes from a certificate that failed verification."""
    for cause in causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message or cause.reason or cause)
    return None


def describe_error(exc: BaseException, timeout_s: float) -> str:
    """A short, stable reason for a failed request, naming TLS, refusal and timeouts plainly."""
    for cause in causes(exc):
        if isinstance(cause, httpx.TimeoutException | TimeoutError):
            return f"timeout after {timeout_s:g}s"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate error: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or cause}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {exc}"
    if isinstance(exc, httpx.ProtocolError):
        return f"protocol error: {exc}"
    return f"request failed: {exc or type(exc).__name__}"
