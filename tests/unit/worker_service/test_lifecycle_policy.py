"""The worker's timing policy: retry backoff and a Dramatiq time limit above every scan."""

from __future__ import annotations

import pytest

from shared.settings import Settings
from worker_service import existence, lifecycle


def test_the_existence_check_waits_at_most_the_sum_of_its_growing_delays() -> None:
    assert existence.longest_wait_s(5, 1.0, 1.5) == pytest.approx(1.0 + 1.5 + 2.25 + 3.375)
    assert existence.longest_wait_s(1, 1.0, 1.5) == 0


@pytest.mark.parametrize("total_timeout_s", [1.0, 60.0, 600.0])
@pytest.mark.parametrize("claim_retry_s", [0.0, 30.0, 300.0])
def test_the_actor_time_limit_is_above_everything_a_run_may_take(
    total_timeout_s: float, claim_retry_s: float
) -> None:
    settings = Settings(total_timeout_s=total_timeout_s, worker_claim_retry_s=claim_retry_s)
    check_s = existence.longest_wait_s(
        settings.existence_check_attempts,
        settings.existence_check_delay_s,
        settings.existence_check_backoff,
    )

    limit_s = lifecycle.actor_time_limit_ms(settings) / 1000

    claim_s = claim_retry_s + lifecycle.CLAIM_RETRY_MAX_S + check_s
    assert limit_s > claim_s + total_timeout_s + lifecycle.SCAN_GRACE_S


def test_retry_backoff_doubles_within_jitter_and_is_capped() -> None:
    settings = Settings(retry_backoff_base_s=5.0, retry_backoff_max_s=30.0)

    for attempts, nominal in [(1, 5.0), (2, 10.0), (3, 20.0)]:
        delay = lifecycle.retry_backoff_s(attempts, settings)
        assert nominal * 0.75 <= delay <= nominal
    assert 22.5 <= lifecycle.retry_backoff_s(10, settings) <= 30.0
