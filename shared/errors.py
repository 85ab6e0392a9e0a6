"""The project's exception family; the API maps each to an HTTP status."""

from __future__ import annotations

from typing import Any


class ScanOutboxError(Exception):
    """Root of every error scan-outbox raises on purpose."""

    code = "internal_error"
    status_code = 500
    # Seconds a client should wait before trying again (`Retry-After`); None: not a wait.
    retry_after_s: int | None = None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def details(self) -> dict[str, Any]:
        """Extra members of the API error body, beyond code, message and field."""
        return {}

    def headers(self) -> dict[str, str]:
        """HTTP header fields the error response carries."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(self.retry_after_s)}


class InvalidInput(ScanOutboxError):
    code = "invalid_input"
    status_code = 422


class InvalidEntries(InvalidInput):
    """Entries of a list in the body are invalid; `errors` names each by index and field."""

    def __init__(self, message: str, *, field: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message, field=field)
        self.errors = errors

    def details(self) -> dict[str, Any]:
        return {"errors": self.errors}


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


class IdempotencyKeyInFlight(Conflict):
    """A request with this Idempotency-Key is still being processed (IETF draft: 409)."""

    code = "idempotency_key_in_flight"
    retry_after_s = 1

    def __init__(self) -> None:
        super().__init__(
            "a request with this Idempotency-Key is still being processed; retry it shortly",
            field="Idempotency-Key",
        )


class IdempotencyKeyReused(InvalidInput):
    """The Idempotency-Key was used before for a request with another body (IETF draft: 422)."""

    code = "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__(
            "this Idempotency-Key was already used for a different request",
            field="Idempotency-Key",
        )


class InvalidState(Conflict):
    """The task's current state does not allow the transition; the body says which state."""

    code = "invalid_state"

    def __init__(self, message: str, *, current_status: str) -> None:
        super().__init__(message)
        self.current_status = current_status

    def details(self) -> dict[str, Any]:
        return {"current_status": self.current_status}


class RateLimited(ScanOutboxError):
    """Too many requests from one token; the body and `Retry-After` say when to come back."""

    code = "rate_limited"
    status_code = 429

    def __init__(
        self, message: str, *, retry_after_s: int, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self._headers = headers or {}

    def details(self) -> dict[str, Any]:
        return {"retry_after_s": self.retry_after_s}

    def headers(self) -> dict[str, str]:
        return {**self._headers, **super().headers()}


class PayloadTooLarge(ScanOutboxError):
    code = "payload_too_large"
    status_code = 413


class Unavailable(ScanOutboxError):
    """A dependency the operation cannot do without (the database) is down."""

    code = "unavailable"
    status_code = 503
    # An outage of the database or a full waiting room passes in about this long; clients back
    # off further on their own after repeated 503s.
    retry_after_s = 1


class TooManyWaiters(Unavailable):
    """This API process already keeps its limit of requests waiting; ask again without
    `wait`, or later."""

    code = "too_many_waiters"


class TooManyClientWaiters(RateLimited):
    """This user already keeps its share of the requests one API process lets wait; a place
    is certainly free after `retry_after_s` (its soonest wait is over by then)."""

    code = "too_many_client_waiters"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.field = "wait"


class PublishError(ScanOutboxError):
    """The broker refused or could not take a message; the row stays unpublished."""


class PermanentPublishError(PublishError):
    """A message that can never be published (unknown actor, bad payload)."""
