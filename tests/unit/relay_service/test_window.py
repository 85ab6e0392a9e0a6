"""Sizing a client's dispatch window from the pace workers take messages."""

from __future__ import annotations

from relay_service.window import PublishRate, recheck_s, window_size
from shared.settings import Settings

SETTINGS = Settings(
    _env_file=None,  # type: ignore[call-arg]
    relay_client_window=64,
    relay_client_window_max=4096,
    relay_window_s=0.25,
    relay_window_poll_s=0.02,
    relay_poll_interval_s=1.0,
)


def test_the_rate_counts_only_the_last_second() -> None:
    rate = PublishRate()
    rate.record(500, now=10.0)
    rate.record(300, now=10.6)
    assert rate.per_s(now=10.9) == 800
    assert rate.per_s(now=11.3) == 300
    assert rate.per_s(now=12.0) == 0


def test_a_lone_clients_window_grows_with_its_workers_pace() -> None:
    assert window_size(0, 1, SETTINGS) == 64
    assert window_size(1000, 1, SETTINGS) == 250
    assert window_size(2000, 1, SETTINGS) == 500


def test_clients_with_a_backlog_share_the_window_so_a_newcomer_waits_as_long() -> None:
    assert window_size(2000, 4, SETTINGS) == 125
    assert window_size(2000, 100, SETTINGS) == 64, "never below the floor"


def test_the_window_never_passes_its_cap() -> None:
    assert window_size(1_000_000, 1, SETTINGS) == 4096


def test_full_windows_are_looked_at_again_soon_then_less_often_while_nothing_moves() -> None:
    assert recheck_s(False, 0, SETTINGS) is None
    assert recheck_s(True, 0, SETTINGS) == 0.02
    assert recheck_s(True, 8, SETTINGS) == 0.02
    assert recheck_s(True, 11, SETTINGS) == 0.16
    assert recheck_s(True, 40, SETTINGS) == 1.0
