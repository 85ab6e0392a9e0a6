"""Sorting a batch's publish outcomes: published, backing off, or dead."""

from __future__ import annotations

import uuid

from relay_service.relay import sort_outcomes
from shared import backoff
from shared.db.outbox import ClaimedMessage
from shared.errors import PermanentPublishError, PublishError
from shared.settings import Settings


def claimed(outbox_id: int, attempts: int = 0) -> ClaimedMessage:
    return ClaimedMessage(
        id=outbox_id,
        message_id=uuid.uuid4(),
        actor="scan_domain",
        queue="scans",
        payload={},
        task_id=None,
        publish_attempts=attempts,
    )


def test_each_row_lands_in_exactly_one_group_in_batch_order() -> None:
    settings = Settings(relay_backoff_base_s=1.0, relay_backoff_max_s=300.0, _env_file=None)  # type: ignore[call-arg]
    batch = [claimed(1), claimed(2, attempts=3), claimed(3), claimed(4)]
    outcomes = ["r1", PublishError("broker unavailable"), PermanentPublishError("unknown"), "r4"]

    rows = sort_outcomes(batch, outcomes, settings)

    assert [(m.id, stored) for m, stored in rows.published] == [(1, "r1"), (4, "r4")]
    assert [(m.id, reason) for m, reason in rows.dead] == [(3, "unknown")]
    [failure] = rows.failures
    assert failure.outbox_id == 2
    assert failure.error == "broker unavailable"
    # The fourth attempt waits 2**3 times the base, less up to a quarter of jitter.
    assert 8 * (1 - backoff.JITTER_FRACTION) <= failure.retry_in_s <= 8


def test_backoff_of_a_long_failing_row_stays_at_the_cap() -> None:
    settings = Settings(relay_backoff_base_s=1.0, relay_backoff_max_s=30.0, _env_file=None)  # type: ignore[call-arg]
    rows = sort_outcomes([claimed(1, attempts=50)], [PublishError("down")], settings)
    assert rows.failures[0].retry_in_s <= 30.0
