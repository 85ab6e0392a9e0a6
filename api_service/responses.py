"""What each route documents in OpenAPI beyond its success: its errors with their body, and
the header fields clients act on (`Retry-After`, the IETF RateLimit fields), which a create's
answer sets here too."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from api_service import idempotency
from api_service.schemas import ErrorResponse
from shared import create_rate

_INTEGER = {"schema": {"type": "integer"}}
_STRING = {"schema": {"type": "string"}}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", **_INTEGER}}
RATE_LIMIT = {
    "RateLimit-Policy": {
        "description": 'The create quota: burst `q`, seconds `w` to refill it ("creates";q=60;w=6)',
        **_STRING,
    },
    "RateLimit": {
        "description": "What is left of it: tasks `r` now, seconds `t` until it is full "
        '("creates";r=59;t=1)',
        **_STRING,
    },
}
REPLAYED = {
    idempotency.REPLAYED_HEADER: {
        "description": "`true` on the replay of an earlier create with the same Idempotency-Key",
        **_STRING,
    }
}

_DESCRIPTIONS = {
    401: "No bearer token, or one that is invalid or revoked",
    403: "The token's user may not do this",
    404: "No such resource for this token's user",
    409: "The resource's state forbids this, or a request with this Idempotency-Key is "
    "still being processed",
    413: "The body is larger than the route accepts",
    422: "Invalid input: `field` names it (for a batch, `errors` names each entry)",
    429: "Too many requests from this token; `Retry-After` says when to come back",
    503: "A dependency is down or the process is full; `Retry-After` says when to come back",
}
_HEADERS: dict[int, dict[str, Any]] = {429: RETRY_AFTER, 503: RETRY_AFTER}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each with the one error body."""
    documented: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": _DESCRIPTIONS[code]}
        if code in _HEADERS:
            entry["headers"] = _HEADERS[code]
        documented[code] = entry
    return documented


def rate_limited_create(description: str) -> dict[int | str, dict[str, Any]]:
    """A create's answers beyond its 201: a 429 with the RateLimit fields, and its errors."""
    return {
        **errors(401, 409, 413, 422, 503),
        429: {
            "model": ErrorResponse,
            "description": description,
            "headers": {**RETRY_AFTER, **RATE_LIMIT},
        },
    }


def idempotent_create(too_many: str) -> dict[int | str, dict[str, Any]]:
    """A create's answers: its 201 (or the replay of an earlier create) with the RateLimit and
    Idempotent-Replayed fields, and those of `rate_limited_create`, `too_many` its 429's."""
    return {
        201: {
            "description": "Created, or the replay of a create with the same Idempotency-Key",
            "headers": {**RATE_LIMIT, **REPLAYED},
        },
        **rate_limited_create(too_many),
    }


def answer_create(
    response: Response, location: str, quota: create_rate.Quota | None, *, replayed: bool
) -> None:
    """The header fields `idempotent_create` documents, and `Location`, on a create's 201."""
    response.headers.update(create_rate.headers(quota))
    response.headers["Location"] = location
    if replayed:
        response.headers[idempotency.REPLAYED_HEADER] = "true"
