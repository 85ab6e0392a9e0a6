"""Scenario charts as PNG files: throughput bars with min-max whiskers, latency box plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Files only: no display on servers and CI machines.

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

from bench.common import BarChart, Chart, DistributionChart


def render_charts(out_dir: Path, stem: str, charts: Sequence[Chart]) -> list[Path]:
    """Write each chart as `<stem>-<n>.png` in `out_dir`; the paths written."""
    paths = []
    for index, chart in enumerate(charts, start=1):
        figure, axes = plt.subplots(figsize=(9, 0.5 * _rows(chart) + 1.6), dpi=110)
        if isinstance(chart, BarChart):
            _bars(axes, chart)
        else:
            _distributions(axes, chart)
        axes.set_title(chart.title, fontsize=10)
        axes.grid(axis="x", alpha=0.3)
        figure.tight_layout()
        path = out_dir / f"{stem}-{index}.png"
        figure.savefig(path)
        plt.close(figure)
        paths.append(path)
    return paths


def _rows(chart: Chart) -> int:
    return len(chart.bars) if isinstance(chart, BarChart) else len(chart.series)


def _bars(axes: Axes, chart: BarChart) -> None:
    labels = list(chart.bars)
    medians = [chart.bars[label].median for label in labels]
    below = [chart.bars[label].median - chart.bars[label].low for label in labels]
    above = [chart.bars[label].high - chart.bars[label].median for label in labels]
    positions = range(len(labels))
    axes.barh(positions, medians, xerr=[below, above], color="#4c72b0", capsize=3)
    axes.set_yticks(list(positions), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(f"{chart.unit} (median of repetitions, whiskers min-max)")
    for position, median in zip(positions, medians, strict=True):
        axes.text(median, position, f" {median:,.0f}", va="center", fontsize=7)


def _distributions(axes: Axes, chart: DistributionChart) -> None:
    labels = [label for label, samples in chart.series.items() if samples]
    data = [list(chart.series[label]) for label in labels]
    axes.boxplot(data, vert=False, whis=(1, 99), showfliers=False)
    axes.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    axes.invert_yaxis()
    if chart.log_scale:
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_xlabel(f"{chart.unit} (box p25-p75, line p50, whiskers p1-p99)")
