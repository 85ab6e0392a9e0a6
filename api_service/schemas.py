"""Request and response models of the HTTP API (never the ORM classes)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

MAX_RULES = 50
# NUL cannot be stored in PostgreSQL text or jsonb, and a lone surrogate (legal in
# JSON escapes) cannot be encoded as UTF-8: refuse both before they reach the database.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(text: str) -> str:
    if _UNSTORABLE.search(text):
        raise ValueError("must not contain NUL characters or unpaired surrogates")
    return text


RuleText = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable)
]


class ScanConfig(BaseModel):
    """What a scan looks for in the home page, beyond the standard facts."""

    model_config = ConfigDict(extra="forbid")

    keywords: list[RuleText] = Field(default_factory=list, max_length=MAX_RULES)
    regexes: list[RuleText] = Field(default_factory=list, max_length=MAX_RULES)

    @field_validator("regexes")
    @classmethod
    def _compilable(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return patterns


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_domain: str = Field(
        max_length=1024, description="A public domain name; IDN allowed, no scheme or path."
    )
    config: ScanConfig = Field(default_factory=ScanConfig)


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    target_domain: str
    config: dict[str, Any]
    status: str
    attempts: int = Field(description="Runs started (claims); a re-dispatch is not one.")
    max_attempts: int
    redispatches: int = Field(
        description="Times the task was sent again through no fault of its own: its message "
        "was lost, the broker lost its data, or its worker's lease expired."
    )
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next (older) page; null on the last page."
    )


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
