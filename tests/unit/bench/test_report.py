"""The benchmark report's arithmetic and rendering: medians, verdicts, Markdown cells."""

from __future__ import annotations

import math

import pytest

from bench.common import ScenarioResult, Spread, percentile, verdict
from bench.report import cell, render_markdown, to_json


def test_spread_keeps_median_min_and_max() -> None:
    spread = Spread.of([30.0, 10.0, 20.0, 50.0])
    assert (spread.median, spread.low, spread.high) == (25.0, 10.0, 50.0)
    assert spread.samples == (30.0, 10.0, 20.0, 50.0)


def test_spread_needs_a_sample() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        Spread.of([])


@pytest.mark.parametrize(
    ("value", "target", "threshold", "expected"),
    [
        (0.95, "≥", 0.9, "meets ≥ 0.9"),
        (0.9, "≥", 0.9, "meets ≥ 0.9"),
        (0.89, "≥", 0.9, "MISSES ≥ 0.9"),
        (1.5, "≤", 1.5, "meets ≤ 1.5"),
        (9.6, "≤", 1.5, "MISSES ≤ 1.5"),
    ],
)
def test_verdict_says_when_a_target_is_missed(
    value: float, target: str, threshold: float, expected: str
) -> None:
    assert verdict(value, target, threshold) == expected


def test_verdict_refuses_an_unknown_comparison() -> None:
    with pytest.raises(ValueError, match="unknown comparison"):
        verdict(1.0, ">", 1.0)


def test_percentile_is_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert percentile(samples, 0.5) == 50.0
    assert percentile(samples, 0.99) == 99.0
    assert math.isnan(percentile([], 0.5))


def test_cells_render_spreads_numbers_and_missing_figures() -> None:
    assert cell(Spread.of([1200.0, 1000.0, 1100.0])) == "1,100 (1,000-1,200)"
    assert cell({"median": 0.5, "min": 0.25, "max": 2.0, "samples": []}) == "0.50 (0.25-2.00)"
    assert cell(12345) == "12,345"
    assert cell(float("nan")) == "n/a"
    assert cell(True) == "yes"


def test_markdown_lists_every_verdict_with_misses_visible() -> None:
    result = ScenarioResult(title="drain", columns=["setup", "rate", "verdict"])
    result.rows += [
        {"setup": "ours", "rate": Spread.of([3.0, 2.0, 4.0]), "verdict": verdict(3, "≥", 3)},
        {"setup": "slow", "rate": Spread.of([1.0, 1.0, 1.0]), "verdict": verdict(1, "≥", 3)},
        {"setup": "baseline", "rate": 1.0, "verdict": ""},
    ]
    scenario = to_json(result)
    assert scenario["rows"][0]["rate"] == {
        "median": 3.0,
        "min": 2.0,
        "max": 4.0,
        "samples": (3.0, 2.0, 4.0),
    }
    machine = {
        "cpus": 2,
        "platform": "Linux",
        "python": "3.11",
        "postgresql": "18",
        "redis": "6.2",
        "packages": {"dramatiq": "2.2.1"},
    }
    text = render_markdown(
        {"date": "2026-01-01", "machine": machine, "scenarios": {"e2e": scenario}}
    )
    assert "| e2e | ours | meets ≥ 3 |" in text
    assert "| e2e | slow | MISSES ≥ 3 |" in text
    assert "baseline |" not in text.split("## drain")[0]
    assert "| ours | 3.00 (2.00-4.00) | meets ≥ 3 |" in text
    assert "dramatiq 2.2.1" in text


def test_targets_name_rows_by_their_label_columns_and_list_every_target_column() -> None:
    result = ScenarioResult(
        title="latency",
        columns=["mode", "rate_per_s", "p50_ms", "p50_target", "p99_target"],
        label_columns=["mode", "rate_per_s"],
    )
    for rate in (5.0, 200.0):
        result.rows.append(
            {
                "mode": "scan-outbox",
                "rate_per_s": rate,
                "p50_ms": 4.0,
                "p50_target": verdict(4.0, "≤", 10),
                "p99_target": verdict(60.0, "≤", 50),
            }
        )
    machine = {"cpus": 2, "platform": "x", "python": "3", "postgresql": "18", "redis": "6"}
    report = {
        "date": "d",
        "machine": {**machine, "packages": {}},
        "scenarios": {"l": to_json(result)},
    }
    text = render_markdown(report)
    assert "| l | scan-outbox, 5.00 (p50_target) | meets ≤ 10 |" in text
    assert "| l | scan-outbox, 200 (p99_target) | MISSES ≤ 50 |" in text
