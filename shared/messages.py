"""The relay→worker message contract: what an outbox row's payload holds."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared import keys


@dataclass(frozen=True)
class OutboxEntry:
    """A message to be written to the outbox in the caller's transaction."""

    message_id: uuid.UUID
    actor: str
    queue: str
    payload: dict[str, Any]
    task_id: uuid.UUID | None


def scan_entry(task_id: uuid.UUID, queue: str, request_id: str | None = None) -> OutboxEntry:
    """The message that starts (or restarts) the scan of one task."""
    payload: dict[str, Any] = {"task_id": str(task_id)}
    if request_id:
        payload["request_id"] = request_id
    return OutboxEntry(
        message_id=uuid.uuid4(),
        actor=keys.SCAN_ACTOR,
        queue=queue,
        payload=payload,
        task_id=task_id,
    )
