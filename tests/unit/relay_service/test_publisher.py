"""The Dramatiq publisher's fallbacks, with a broker double: no servers."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from redis import exceptions as redis_errors

from relay_service import pipelined
from relay_service.publisher import INLINE_MAX_MESSAGES, DramatiqPublisher
from shared.db.outbox import ClaimedMessage
from shared.errors import PermanentPublishError, PublishError


class FakeBroker:
    """Takes messages one by one; raises the queued errors first."""

    def __init__(self, *errors: BaseException | None) -> None:
        self.errors = list(errors)
        self.enqueued: list[str] = []

    def enqueue(self, message: Any) -> Any:
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error
        self.enqueued.append(message.message_id)
        return message.copy(options={"redis_message_id": f"stored-{message.message_id}"})


def claimed(actor: str = "scan_domain", payload: dict[str, Any] | None = None) -> ClaimedMessage:
    return ClaimedMessage(
        id=1,
        message_id=uuid.uuid4(),
        actor=actor,
        queue="scans",
        payload=payload or {"task_id": "t"},
        task_id=None,
        publish_attempts=0,
    )


async def test_a_failed_pipeline_falls_back_to_one_outcome_per_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(broker: Any, messages: Any) -> list[object]:
        raise redis_errors.ConnectionError("reset by peer")

    monkeypatch.setattr(pipelined, "enqueue_many", broken)
    broker = FakeBroker(None, redis_errors.ResponseError("OOM"), None)
    batch = [claimed(), claimed(), claimed("nope"), claimed()]

    outcomes = await DramatiqPublisher(broker, use_pipeline=True).publish(batch)

    assert outcomes[0] == f"stored-{batch[0].message_id}"
    assert isinstance(outcomes[1], PublishError)
    assert not isinstance(outcomes[1], PermanentPublishError)
    assert isinstance(outcomes[2], PermanentPublishError)
    assert outcomes[3] == f"stored-{batch[3].message_id}"
    assert broker.enqueued == [str(batch[0].message_id), str(batch[3].message_id)]


async def test_an_unreachable_broker_fails_the_rest_of_the_batch_without_trying_it() -> None:
    broker = FakeBroker(None, redis_errors.ConnectionError("refused"))
    batch = [claimed()] * 5
    outcomes = await DramatiqPublisher(broker, use_pipeline=False).publish(batch)
    assert outcomes[0] == f"stored-{batch[0].message_id}"
    assert all(isinstance(o, PublishError) for o in outcomes[1:])
    assert all("broker unavailable" in str(o) for o in outcomes[1:])
    assert len(broker.enqueued) == 1


async def test_per_message_errors_inside_a_pipeline_stay_per_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def partial(broker: Any, messages: Any) -> list[tuple[str, object]]:
        return [("a", 1), ("b", redis_errors.ResponseError("OOM command not allowed")), ("c", 1)]

    monkeypatch.setattr(pipelined, "enqueue_many", partial)
    outcomes = await DramatiqPublisher(FakeBroker(), use_pipeline=True).publish([claimed()] * 3)
    assert outcomes[0] == "a"
    assert outcomes[2] == "c"
    assert isinstance(outcomes[1], PublishError)
    assert "OOM" in str(outcomes[1])


async def test_small_batches_leave_the_loop_only_after_a_failure_until_one_goes_out_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop_thread = threading.get_ident()
    sent_from: list[bool] = []
    failing = [False]

    def enqueue_many(broker: Any, messages: Any) -> list[tuple[str, object]]:
        sent_from.append(threading.get_ident() == loop_thread)
        if failing[0]:
            raise redis_errors.TimeoutError("no answer")
        return [(f"stored-{m.message_id}", 1) for m in messages]

    monkeypatch.setattr(pipelined, "enqueue_many", enqueue_many)
    broker = FakeBroker(redis_errors.TimeoutError("no answer"))
    publisher = DramatiqPublisher(broker, use_pipeline=True)
    small = [claimed()] * INLINE_MAX_MESSAGES

    await publisher.publish(small)
    failing[0] = True
    assert all(isinstance(o, PublishError) for o in await publisher.publish(small))
    failing[0] = False
    await publisher.publish(small)  # the broker answers again
    await publisher.publish(small)
    await publisher.publish([claimed()] * (INLINE_MAX_MESSAGES + 1))

    # On the loop, on the loop (it failed there), in a thread (after the failure), on the
    # loop again, and a big batch in a thread.
    assert sent_from == [True, True, False, True, False]
