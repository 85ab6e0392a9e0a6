"""ASGI middleware: request ids, request metrics and the request-body size cap."""

from __future__ import annotations

import abc
import re
import time
import uuid
from collections.abc import Mapping

import structlog
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_service.exception_handlers import error_response
from shared import metrics

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def pick_request_id(given: str | None) -> str:
    """The caller's id when it is short and plain, otherwise a new one."""
    if given and _SAFE_REQUEST_ID.match(given):
        return given
    return uuid.uuid4().hex


class HttpMiddleware(abc.ABC):
    """A pure ASGI middleware that acts on HTTP requests in `handle`; everything else
    (the lifespan, websockets) passes through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    @abc.abstractmethod
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The middleware's work on one HTTP request."""


class RequestIdMiddleware(HttpMiddleware):
    """Binds a request id to every log line and returns it in `X-Request-ID`."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = None
        for name, value in scope.get("headers", []):
            if name == REQUEST_ID_HEADER.encode():
                given = value.decode("latin-1")
                break
        request_id = pick_request_id(given)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class BodyTooLarge(HTTPException):
    """An HTTPException, so the body parser passes it on instead of calling it a bad body."""

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(413, f"request body exceeds {max_body_bytes} bytes")


class BodySizeLimitMiddleware(HttpMiddleware):
    """Refuses bodies over `max_body_bytes` (or the limit `by_path` gives the exact path)
    with 413, whether or not Content-Length says so."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, by_path: Mapping[str, int] | None = None
    ) -> None:
        super().__init__(app)
        self.max_body_bytes = max_body_bytes
        self.by_path = dict(by_path or {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.by_path.get(scope.get("path", ""), self.max_body_bytes)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._refuse(scope, receive, send, limit)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(
            413, "payload_too_large", f"request body exceeds {limit} bytes", "body"
        )
        await response(scope, receive, send)


_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"


def route_label(scope: Scope) -> str:
    """The matched route's template (`/api/v1/tasks/{task_id}`), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class MetricsMiddleware(HttpMiddleware):
    """Counts requests and times them by method, route template and status."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else "OTHER"
        status = 500  # what the client gets if the app raises before answering
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = route_label(scope)
            metrics.HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
            metrics.HTTP_REQUEST_DURATION.labels(method=method, route=route).observe(
                time.perf_counter() - started
            )
