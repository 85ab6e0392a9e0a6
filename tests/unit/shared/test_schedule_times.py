"""Next fire times from APScheduler's triggers: intervals, cron in a zone, DST, missed ticks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.schedule_times import (
    MAX_COUNTED_TICKS,
    InvalidSpec,
    MissedPolicy,
    Spec,
    first_after,
    following,
    plan,
    shortest_gap_s,
)

ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)


def every(seconds: int) -> Spec:
    return Spec(None, "UTC", seconds, ANCHOR)


def daily(cron: str, zone: str) -> Spec:
    return Spec(cron, zone, None, ANCHOR)


def test_interval_ticks_stay_on_the_anchor_grid_whatever_the_clock() -> None:
    trigger = every(60).trigger()
    now = ANCHOR + timedelta(minutes=5, seconds=17.5)
    assert first_after(trigger, now) == ANCHOR + timedelta(minutes=6)
    # Exactly on a tick: the next one is strictly later, never the same tick again.
    assert first_after(trigger, ANCHOR + timedelta(minutes=6)) == ANCHOR + timedelta(minutes=7)


def test_a_paris_tick_that_does_not_exist_fires_once_an_hour_later_in_the_new_time() -> None:
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that night.
    trigger = daily("30 2 * * *", "Europe/Paris").trigger()
    before = datetime(2026, 3, 28, 12, tzinfo=UTC)
    ticks = [first_after(trigger, before)]
    for _ in range(2):
        tick = following(trigger, ticks[-1])
        assert tick is not None
        ticks.append(tick)
    assert [t.astimezone(UTC) for t in ticks if t is not None] == [
        datetime(2026, 3, 29, 1, 30, tzinfo=UTC),  # 03:30 CEST
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),  # 02:30 CEST
        datetime(2026, 3, 31, 0, 30, tzinfo=UTC),
    ]


def test_a_paris_tick_that_occurs_twice_fires_at_both() -> None:
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    trigger = daily("30 2 * * *", "Europe/Paris").trigger()
    first = first_after(trigger, datetime(2026, 10, 24, 12, tzinfo=UTC))
    assert first is not None
    second = following(trigger, first)
    assert second is not None
    assert first.astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert second.astimezone(UTC) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


def test_a_tick_on_time_fires_and_the_next_follows_it() -> None:
    trigger = every(10).trigger()
    due = ANCHOR + timedelta(seconds=10)
    firing = plan(trigger, due, due + timedelta(seconds=0.3), MissedPolicy.SKIP, 5)
    assert (firing.tick, firing.missed, firing.next_fire_at) == (
        due,
        0,
        ANCHOR + timedelta(seconds=20),
    )


def test_five_missed_ticks_make_one_run_under_run_once_and_none_under_skip() -> None:
    trigger = every(1).trigger()
    due = ANCHOR + timedelta(seconds=1)
    now = due + timedelta(seconds=4.5)  # ticks 1..5 are due
    once = plan(trigger, due, now, MissedPolicy.RUN_ONCE, 30)
    assert once.tick == ANCHOR + timedelta(seconds=5)
    assert once.missed == 4
    assert once.next_fire_at == ANCHOR + timedelta(seconds=6)
    skipped = plan(trigger, due, now, MissedPolicy.SKIP, 30)
    assert skipped.tick is None
    assert skipped.missed == 5
    assert skipped.next_fire_at == ANCHOR + timedelta(seconds=6)


def test_one_tick_later_than_the_grace_is_missed() -> None:
    trigger = daily("0 0 * * *", "UTC").trigger()
    due = datetime(2026, 2, 1, tzinfo=UTC)
    late = due + timedelta(minutes=10)
    assert plan(trigger, due, late, MissedPolicy.SKIP, 30).tick is None
    assert plan(trigger, due, late, MissedPolicy.RUN_ONCE, 30).tick == due


def test_missed_ticks_are_counted_up_to_a_bound() -> None:
    trigger = every(1).trigger()
    firing = plan(trigger, ANCHOR, ANCHOR + timedelta(days=1), MissedPolicy.RUN_ONCE, 30)
    assert firing.missed == MAX_COUNTED_TICKS - 1
    assert firing.next_fire_at == ANCHOR + timedelta(days=1, seconds=1)


def test_the_shortest_gap_of_a_cron_expression() -> None:
    trigger = daily("*/5 9-17 * * 1-5", "UTC").trigger()
    assert shortest_gap_s(trigger, ANCHOR) == 300


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (Spec("not cron", "UTC", None, ANCHOR), "cron"),
        (Spec("* * * * *", "Mars/Olympus", None, ANCHOR), "timezone"),
        (Spec("61 * * * *", "UTC", None, ANCHOR), "cron"),
    ],
)
def test_a_bad_spec_names_its_field(spec: Spec, field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        spec.trigger()
    assert caught.value.field == field
