"""Request and response models of the HTTP API (never the ORM classes)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

from shared import patterns

MAX_RULES = 50
Item = TypeVar("Item")
# NUL cannot be stored in PostgreSQL text or jsonb, and a lone surrogate (legal in
# JSON escapes) cannot be encoded as UTF-8: refuse both before they reach the database.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(text: str) -> str:
    if _UNSTORABLE.search(text):
        raise ValueError("must not contain NUL characters or unpaired surrogates")
    return text


def _linear(pattern: str) -> str:
    try:
        patterns.compile_pattern(pattern)
    except patterns.UnsupportedPattern as exc:
        raise ValueError(str(exc)) from exc
    return pattern


RuleText = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable)
]
# Checked item by item, so an error names the pattern's index (`config.regexes.2`).
RegexText = Annotated[RuleText, AfterValidator(_linear)]


class ScanConfig(BaseModel):
    """What a scan looks for in the home page, beyond the standard facts."""

    model_config = ConfigDict(extra="forbid")

    keywords: list[RuleText] = Field(
        default_factory=list,
        max_length=MAX_RULES,
        description="Literal words, matched case-insensitively.",
    )
    regexes: list[RegexText] = Field(
        default_factory=list,
        max_length=MAX_RULES,
        description="RE2 patterns (linear-time: no backreferences, no lookaround).",
    )


TargetDomain = Annotated[
    str, Field(max_length=1024, description="A public domain name; IDN allowed, no scheme or path.")
]


def callback_url_field(what: str) -> Any:
    """A create's optional `callback_url`, described as the URL to POST `what` to."""
    return Field(
        default=None,
        max_length=2048,
        description=f"https URL to POST {what} (see docs/api.md); needs a signing secret "
        "(POST /api/v1/callbacks/secret).",
        examples=["https://hooks.example.com/scan-finished"],
    )


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_domain: TargetDomain
    config: ScanConfig = Field(default_factory=ScanConfig)
    callback_url: str | None = callback_url_field("a signed completion callback to")


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
    callback_url: str | None = None

    @classmethod
    def as_created(cls, task: Any) -> TaskOut:
        """The task as its create answered: pending, never run (an idempotent replay)."""
        created: TaskOut = cls.model_validate(task)
        return created.model_copy(
            update={
                "status": "pending",
                "attempts": 0,
                "redispatches": 0,
                "result": None,
                "error": None,
                "updated_at": created.created_at,
                "queued_at": None,
                "started_at": None,
                "finished_at": None,
            }
        )


class KeysetPage(BaseModel, Generic[Item]):
    """One page of a newest-first list; each route's page is a subclass named for OpenAPI."""

    items: list[Item]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next (older) page; null on the last page."
    )


class TaskPage(KeysetPage[TaskOut]):
    pass


# A hard ceiling for the schema; the configured limit (`SCAN_BATCH_MAX_TASKS`) applies below it.
BATCH_TASKS_CEILING = 10_000


class BatchEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_domain: TargetDomain


class BatchCreate(BaseModel):
    """Many domains, one scan config: every task and its message commit together."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "tasks": [{"target_domain": "example.com"}, {"target_domain": "example.org"}],
                    "config": {"keywords": ["login"], "regexes": []},
                }
            ]
        },
    )

    tasks: list[BatchEntry] = Field(
        min_length=1,
        max_length=BATCH_TASKS_CEILING,
        description="The domains to scan, at most `SCAN_BATCH_MAX_TASKS` (default 1,000). "
        "The same domain twice (after normalisation) is one task.",
    )
    config: ScanConfig = Field(default_factory=ScanConfig)
    callback_url: str | None = callback_url_field(
        "one signed callback to once every task has ended"
    )


class BatchTaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    target_domain: str
    status: str
    attempts: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class BatchTaskResultOut(BatchTaskOut):
    """A batch's task with its report (`include=result`)."""

    result: dict[str, Any] | None = Field(description="The scan's report once it succeeded.")


_BATCH_EXAMPLE: dict[str, Any] = {
    "id": "0f8b7c9e-4a51-4d7e-9a4b-2f4c1e6a9b10",
    "task_count": 2,
    "config": {"keywords": ["login"], "regexes": []},
    "counts": {"pending": 1, "succeeded": 1},
    "done": False,
    "created_at": "2026-12-02T10:00:00Z",
    "updated_at": "2026-12-02T10:00:03Z",
    "finished_at": None,
    "tasks": [
        {
            "id": "5b0f3c1a-8e0e-4f43-a4bd-1b8b8f1f2a55",
            "target_domain": "example.com",
            "status": "succeeded",
            "attempts": 1,
            "error": None,
            "created_at": "2026-12-02T10:00:00Z",
            "finished_at": "2026-12-02T10:00:03Z",
        }
    ],
    "next_cursor": "MQ",
}


class BatchSummaryOut(BaseModel):
    """A batch and its progress, without its tasks."""

    id: uuid.UUID
    task_count: int = Field(description="Tasks in the batch (duplicates counted once).")
    config: dict[str, Any]
    counts: dict[str, int] = Field(description="Tasks by status; absent statuses are 0.")
    done: bool = Field(description="Every task has ended (succeeded, failed or cancelled).")
    created_at: datetime
    updated_at: datetime = Field(description="The latest change to any of its tasks.")
    finished_at: datetime | None = Field(description="When the last task ended, once all have.")
    callback_url: str | None = None


class BatchOut(BatchSummaryOut):
    model_config = ConfigDict(json_schema_extra={"examples": [dict(_BATCH_EXAMPLE)]})

    tasks: list[BatchTaskResultOut | BatchTaskOut] = Field(
        description="One page of its tasks, in submission order; each with its `result` "
        "when asked for with `include=result`."
    )
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page of tasks; null on the last page."
    )


class BatchPage(KeysetPage[BatchSummaryOut]):
    pass


class SecretRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retire_previous: bool = Field(
        default=False,
        description="Also stop signing with the secret this one replaces (default: both "
        "sign until the next rotation, so receivers can switch at their own pace).",
    )


class SecretOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZI…", "previous_still_signs": True}
            ]
        }
    )

    secret: str = Field(description="Shown once; keep it with the receiver.")
    previous_still_signs: bool


class EntryError(BaseModel):
    index: int = Field(description="Position of the bad entry in the list (from 0).")
    field: str
    reason: str


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    errors: list[EntryError] | None = Field(
        default=None, description="For a batch: every bad entry, by index and field."
    )


class ErrorResponse(BaseModel):
    error: ErrorBody


class DeliveryAttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempted_at: datetime = Field(description="When the POST started.")
    duration_ms: int
    status: int | None = Field(description="The receiver's HTTP status; null: no answer.")
    error: str | None = Field(description="Why the try failed (timeout, connection, HTTP …).")
    outcome: str = Field(description="delivered, failed (tried again), gone (410) or dead.")


class DeliveryOut(BaseModel):
    id: uuid.UUID = Field(description="The `webhook-id` header (and `id` in the body).")
    event: str
    state: str = Field(description="pending, delivered, dead, or gone (the receiver said 410).")
    task_id: uuid.UUID | None
    batch_id: uuid.UUID | None
    url: str
    attempts: int = Field(description="Tries so far (reset by a replay).")
    last_status: int | None
    last_error: str | None
    created_at: datetime
    next_try_at: datetime | None = Field(description="When a pending delivery is tried next.")
    delivered_at: datetime | None
    dead_at: datetime | None


class DeliveryDetail(DeliveryOut):
    user_id: int | None = Field(default=None, description="The owner (administrators only).")
    attempt_log: list[DeliveryAttemptOut] = Field(description="Every recorded try, oldest first.")


class DeliveryPage(KeysetPage[DeliveryOut]):
    pass


class CallbackTest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    callback_url: str = Field(
        max_length=4096, description="Where to send a `callback.test` event, signed."
    )
