"""The project's exception family; the API maps each to an HTTP status."""

from __future__ import annotations


class ScanOutboxError(Exception):
    """Root of every error scan-outbox raises on purpose."""

    code = "internal_error"
    status_code = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(ScanOutboxError):
    code = "invalid_input"
    status_code = 422


class NotAuthenticated(ScanOutboxError):
    code = "not_authenticated"
    status_code = 401


class Forbidden(ScanOutboxError):
    code = "forbidden"
    status_code = 403


class NotFound(ScanOutboxError):
    code = "not_found"
    status_code = 404


class Conflict(ScanOutboxError):
    code = "conflict"
    status_code = 409


class PayloadTooLarge(ScanOutboxError):
    code = "payload_too_large"
    status_code = 413


class Unavailable(ScanOutboxError):
    """A dependency the operation cannot do without (the database) is down."""

    code = "unavailable"
    status_code = 503


class PublishError(ScanOutboxError):
    """The broker refused or could not take a message; the row stays unpublished."""


class PermanentPublishError(PublishError):
    """A message that can never be published (unknown actor, bad payload)."""
