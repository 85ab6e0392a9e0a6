"""When a failed callback is tried again: the schedule, Retry-After within bounds, 410."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from relay_service.callback_retries import RetryPolicy, parse_retry_after
from shared.settings import CALLBACK_RETRY_SCHEDULE_S, Settings

NOW = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)


def policy(**update: object) -> RetryPolicy:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    return RetryPolicy.of(settings.model_copy(update=update))


def test_the_default_schedule_is_standard_webhooks_example_about_three_days() -> None:
    waits = [policy().retry_in_s(attempt, 500, None) for attempt in range(1, 10)]
    assert all(w is not None for w in waits)
    for wait, scheduled in zip(waits, CALLBACK_RETRY_SCHEDULE_S, strict=True):
        assert wait is not None
        assert 0.75 * scheduled <= wait <= scheduled
    assert 2.3 * 86_400 < sum(w or 0 for w in waits) <= 75.6 * 3600 + 1
    assert policy().retry_in_s(10, 500, None) is None


def test_jitter_spreads_retries_that_failed_together() -> None:
    assert len({policy().retry_in_s(3, 503, None) for _ in range(20)}) > 1


def test_a_410_ends_the_delivery_at_once() -> None:
    assert policy().retry_in_s(1, 410, None) is None
    assert policy().retry_in_s(1, 410, 60.0) is None


def test_retry_after_replaces_the_schedule_within_bounds() -> None:
    bounded = policy(callback_retry_after_min_s=5.0, callback_retry_after_max_s=3600.0)
    assert bounded.retry_in_s(1, 429, 120.0) == 120.0
    assert bounded.retry_in_s(1, 503, 0.0) == 5.0
    assert bounded.retry_in_s(1, 503, 10.0**9) == 3600.0
    assert bounded.retry_in_s(10, 503, 120.0) is None


def test_a_schedule_shorter_than_the_tries_repeats_its_last_wait() -> None:
    short = policy(callback_retry_schedule_s=[1.0, 2.0], callback_max_attempts=5)
    wait = short.retry_in_s(4, None, None)
    assert wait is not None
    assert 1.5 <= wait <= 2.0


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after(format_datetime(NOW + timedelta(seconds=90), usegmt=True), NOW) == 90
    assert parse_retry_after(format_datetime(NOW - timedelta(hours=1), usegmt=True), NOW) == 0.0
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("-5", NOW) is None


def test_the_schedule_setting_reads_a_comma_separated_list() -> None:
    settings = Settings(_env_file=None, callback_retry_schedule_s="1, 2.5,60")  # type: ignore[call-arg]
    assert settings.callback_retry_schedule_s == [1.0, 2.5, 60.0]
