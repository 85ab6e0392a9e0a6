import uuid
from datetime import UTC, datetime, timedelta

from api_service.ui.views import dispatch_message, timeline
from shared.db.models import OutboxMessage, Task

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def ms(value: float) -> timedelta:
    return timedelta(milliseconds=value)


def message(row_id: int, created: datetime, published: datetime | None) -> OutboxMessage:
    return OutboxMessage(
        id=row_id, created_at=created, available_at=created, published_at=published
    )


def task(**times: datetime | None) -> Task:
    return Task(id=uuid.uuid4(), created_at=T0, **times)


def test_a_first_run_reads_created_published_started_finished_with_gaps() -> None:
    done = task(started_at=T0 + ms(150), finished_at=T0 + ms(900))
    steps = timeline(done, [message(1, T0, T0 + ms(40))])
    assert [(s.name, s.gap_ms) for s in steps] == [
        ("created", None),
        ("published", 40),
        ("started", 110),
        ("finished", 750),
    ]


def test_a_retried_task_shows_when_its_new_message_came_due() -> None:
    first = message(1, T0, T0 + ms(10))
    retry_at = T0 + timedelta(minutes=5)
    second = message(2, retry_at, retry_at + ms(20))
    rerun = task(started_at=retry_at + ms(70), finished_at=None)
    assert dispatch_message(rerun, [first, second]) is second
    steps = timeline(rerun, [first, second])
    assert [s.name for s in steps] == ["created", "message due", "published", "started"]
    assert steps[1].gap_ms == 300_000
    assert steps[2].gap_ms == 20


def test_a_waiting_task_shows_what_happened_so_far() -> None:
    waiting = task(started_at=None, finished_at=None)
    assert [s.name for s in timeline(waiting, [message(1, T0, None)])] == ["created"]
    assert [s.name for s in timeline(waiting, [])] == ["created"]
