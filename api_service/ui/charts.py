"""Line charts as inline SVG, drawn on the server: no script, no library, no build step.

Colours come from the stylesheet through each series' CSS class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH = 720
HEIGHT = 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 10, 26
Y_TICKS = 4
X_LABEL_EVERY = 10


@dataclass(frozen=True)
class Series:
    name: str
    css_class: str
    values: Sequence[float | None]


def nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least `raw` (> 0)."""
    raw = max(raw, 1e-9)
    exponent = math.floor(math.log10(raw))
    for mantissa in (1, 2, 5, 10):
        step = mantissa * 10.0**exponent
        if step >= raw * (1 - 1e-12):
            return step
    return 10.0 ** (exponent + 1)


def axis_top(values: Sequence[float | None], integers: bool) -> tuple[float, float]:
    """(top of the y axis, tick step) so the largest value fits under round ticks."""
    highest = max((v for v in values if v is not None), default=0.0)
    step = nice_step(highest / Y_TICKS) if highest > 0 else 1.0
    if integers:
        step = max(1.0, math.ceil(step))
    return step * Y_TICKS, step


def _tick_label(value: float, step: float) -> str:
    if step >= 1:
        return f"{value:,.0f}"
    decimals = max(0, -math.floor(math.log10(step)))
    return f"{value:.{decimals}f}"


def _segments(points: Sequence[tuple[float, float] | None]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive points; a None (no data) breaks the line."""
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for point in points:
        if point is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(point)
    if current:
        runs.append(current)
    return runs


def _series_svg(
    series: Series, labels: Sequence[str], x_of: list[float], plot_h: float, top: float, unit: str
) -> list[str]:
    points = [
        None if value is None else (x_of[i], TOP + plot_h * (1 - value / top))
        for i, value in enumerate(series.values)
    ]
    runs = _segments(points)
    parts = []
    for run in (run for run in runs if len(run) > 1):
        path = " ".join(f"{'M' if j == 0 else 'L'}{x:.1f},{y:.1f}" for j, (x, y) in enumerate(run))
        parts.append(f'<path class="line {series.css_class}" d="{path}"/>')
    # A point with no neighbour draws no line: its dot stays visible.
    solo = {run[0] for run in runs if len(run) == 1}
    for i, point in enumerate(points):
        value = series.values[i]
        if point is None or value is None:
            continue
        shown = " solo" if point in solo else ""
        tip = escape(f"{labels[i]} · {series.name}: {value:,.0f}{unit}")
        parts.append(
            f'<circle class="dot{shown} {series.css_class}" cx="{point[0]:.1f}" '
            f'cy="{point[1]:.1f}" r="3"><title>{tip}</title></circle>'
        )
    return parts


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str = "",
    integers: bool = True,
) -> Markup:
    """An SVG line chart of `series` over `labels` (one per x position)."""
    count = len(labels)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top, step = axis_top([v for s in series for v in s.values], integers)
    x_of = [LEFT + (plot_w * i / (count - 1) if count > 1 else plot_w / 2) for i in range(count)]
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in range(Y_TICKS + 1):
        value = step * tick
        y = TOP + plot_h * (1 - value / top)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        label = escape(_tick_label(value, step))
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>'
        )
    for i, label in enumerate(labels):
        last = i == count - 1
        # Every tenth label, and the last one, right-aligned so it stays inside the chart.
        if (i % X_LABEL_EVERY == 0 and i < count - X_LABEL_EVERY // 2) or last:
            anchor = "end" if last and count > 1 else "middle"
            parts.append(
                f'<text class="tick" x="{x_of[i]:.1f}" y="{HEIGHT - 8}" '
                f'text-anchor="{anchor}">{escape(label)}</text>'
            )
    for one in series:
        parts.extend(_series_svg(one, labels, x_of, plot_h, top, unit))
    parts.append("</svg>")
    return Markup("\n".join(parts))
