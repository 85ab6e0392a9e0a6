"""The one backoff every retry uses."""

import pytest

from shared.backoff import backoff_s


@pytest.mark.parametrize(("attempt", "nominal"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0)])
def test_backoff_doubles_per_attempt_within_jitter(attempt: int, nominal: float) -> None:
    for _ in range(50):
        delay = backoff_s(attempt, base_s=1.0, max_s=300.0)
        assert nominal * 0.75 <= delay <= nominal


def test_backoff_never_exceeds_the_cap() -> None:
    assert all(backoff_s(40, base_s=1.0, max_s=30.0) <= 30.0 for _ in range(50))


def test_retries_at_the_cap_still_spread_out() -> None:
    delays = {backoff_s(attempt, base_s=5.0, max_s=30.0) for attempt in (10, 10, 11, 12, 50)}
    assert len(delays) > 1
    assert all(22.5 <= delay <= 30.0 for delay in delays)


def test_an_absurd_attempt_number_does_not_overflow() -> None:
    assert backoff_s(10_000, base_s=1.0, max_s=5.0) <= 5.0
