"""The one place errors become HTTP responses: `{"error": {"code", "message", "field"?}}`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.db import outage
from shared.errors import ScanOutboxError, Unavailable
from shared.logging import get_logger

log = get_logger(__name__)

_HTTP_CODES = {
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    body.update(extra)
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str:
    """`("body", "config", "keywords")` → `config.keywords`; a bare body position → `body`."""
    section, *rest = loc or ("body",)
    if section not in ("body", "query", "path", "header"):
        rest = [section, *rest]
    if not rest or all(isinstance(part, int) for part in rest):
        return "body"
    return ".".join(str(part) for part in rest)


async def _on_project_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ScanOutboxError)
    headers = exc.headers()
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(
        exc.status_code, exc.code, exc.message, exc.field, headers, **exc.details()
    )


def _entry_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Errors inside an entry of a top-level body list (a batch's `tasks[3].target_domain`),
    as `{"index", "field", "reason"}`, the shape `InvalidEntries` gives after validation."""
    entries: list[dict[str, Any]] = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if len(loc) >= 3 and loc[0] == "body" and isinstance(loc[2], int):
            field = ".".join(str(part) for part in loc[3:]) or str(loc[1])
            entries.append({"index": loc[2], "field": field, "reason": str(err.get("msg", ""))})
    return entries


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"field": _field_of(tuple(err.get("loc", ()))), "message": str(err.get("msg", ""))}
        for err in exc.errors()
    ]
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    extra: dict[str, Any] = {"details": details}
    entries = _entry_errors(exc.errors())
    if entries:
        extra["errors"] = entries
    return error_response(422, "invalid_input", first["message"], first["field"], **extra)


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        # FastAPI's answer to a body json.loads refused for a reason other than syntax
        # (bytes that are not UTF-8, nesting too deep): malformed all the same, so 422.
        return error_response(422, "invalid_input", "the body is not valid JSON", "body")
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code in (429, 503):
        headers.setdefault("Retry-After", str(Unavailable.retry_after_s))
    # A body found too large while it streams in is refused from inside the app: name it too.
    field = "body" if exc.status_code == 413 else None
    return error_response(exc.status_code, code, str(exc.detail), field, headers or None)


async def _on_database_down(_: Request, exc: Exception) -> JSONResponse:
    log.error("database_unavailable", error=type(exc).__name__)
    return error_response(
        503,
        Unavailable.code,
        "the database is unavailable; try again shortly",
        headers={"Retry-After": str(Unavailable.retry_after_s)},
    )


async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled_error", error=type(exc).__name__)
    return error_response(500, "internal_error", "internal error")


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    # A restarting server answers "shutting down"/"starting up" as plain DBAPIErrors: still an
    # outage the client may retry, not an internal error.
    if outage.is_outage(exc):
        return await _on_database_down(request, exc)
    return await _on_unexpected(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ScanOutboxError, _on_project_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(DBAPIError, _on_database_error)
    app.add_exception_handler(OSError, _on_database_down)
    app.add_exception_handler(Exception, _on_unexpected)
