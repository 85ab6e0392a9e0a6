import re

import pytest

from api_service.ui import charts


@pytest.mark.parametrize(
    ("raw", "step"), [(0.3, 0.5), (1.0, 1.0), (1.2, 2.0), (3.0, 5.0), (7.0, 10.0), (420.0, 500.0)]
)
def test_steps_are_one_two_or_five_times_a_power_of_ten(raw: float, step: float) -> None:
    assert charts.nice_step(raw) == pytest.approx(step)


def test_the_axis_fits_the_largest_value_under_round_whole_ticks() -> None:
    assert charts.axis_top([0, 3, None, 1], integers=True) == (4.0, 1.0)
    assert charts.axis_top([17], integers=True) == (20.0, 5.0)
    assert charts.axis_top([None, None], integers=True) == (4.0, 1.0)
    assert charts.axis_top([1234.0], integers=False) == (2000.0, 500.0)


def test_a_gap_in_the_data_breaks_the_line_and_a_lone_point_keeps_a_visible_dot() -> None:
    svg = charts.line_chart(
        "latency", ["a", "b", "c", "d", "e"], [charts.Series("p50", "s-p50", [1, 2, None, 4, None])]
    )
    assert svg.count('<path class="line s-p50"') == 1
    assert len(re.findall(r'd="M[^"]*L[^"]*"', svg)) == 1
    assert svg.count('class="dot solo s-p50"') == 1
    assert svg.count("<circle") == 3


def test_labels_and_titles_are_escaped_and_the_last_label_stays_inside() -> None:
    labels = [f"{m:02d}" for m in range(60)]
    labels[0] = "<b>"
    svg = charts.line_chart("a & b", labels, [charts.Series("x<y", "s-created", [1] * 60)])
    assert "<b>" not in svg
    assert "&lt;b&gt;" in svg
    assert "<title>a &amp; b</title>" in svg
    assert "x&lt;y" in svg
    assert 'text-anchor="end">59</text>' in svg
    assert ">50</text>" in svg
    crowded = charts.line_chart("t", [str(m) for m in range(54)], [])
    assert ">40</text>" in crowded
    assert ">50</text>" not in crowded  # too close to the last label, 53
