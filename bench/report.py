"""The benchmark report: the machine it ran on, scenarios as JSON, and the Markdown tables."""

from __future__ import annotations

import dataclasses
import os
import platform
from importlib import metadata
from typing import Any

from bench.common import ScenarioResult, Spread

# Versions that move the figures: the queue libraries, the drivers and the web stack.
PACKAGES = (
    "dramatiq",
    "redis",
    "sqlalchemy",
    "asyncpg",
    "fastapi",
    "uvicorn",
    "procrastinate",
    "psycopg",
)


def environment(servers: dict[str, str]) -> dict[str, Any]:
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        **servers,
        "packages": packages,
    }


def to_json(result: ScenarioResult) -> dict[str, Any]:
    """The scenario with every `Spread` as {median, min, max, samples}; charts stay out
    (they are rendered to PNG and can hold many thousands of samples)."""
    return {
        "title": result.title,
        "columns": result.columns,
        "rows": [{key: _plain(value) for key, value in row.items()} for row in result.rows],
        "notes": result.notes,
        "params": {key: _plain(value) for key, value in result.params.items()},
        "label_columns": result.label_columns or result.columns[:1],
    }


def _plain(value: object) -> object:
    if isinstance(value, Spread):
        return value.as_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def render_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    lines = [
        f"# Benchmarks {report['date']}",
        "",
        f"{machine['cpus']} CPUs ({machine['platform']}), Python {machine['python']}, "
        f"PostgreSQL {machine['postgresql']} and Redis {machine['redis']} embedded, all on "
        f"this one machine; {packages}. `make bench` (`python -m bench`) wrote this file.",
        "",
        "Figures are the median of the repetitions, with (min-max) after them; ratios use",
        "medians. A target a figure misses says MISSES.",
    ]
    targets = render_targets(report["scenarios"])
    if targets:
        lines += ["", "## Targets", "", *targets]
    for name, scenario in report["scenarios"].items():
        lines += ["", f"## {scenario['title']}", ""]
        params = scenario["params"]
        load = params.get("load_1m", ["?", "?"])
        lines.append(
            f"`{name}`, scale {params.get('scale', 1):g}, {params.get('reps', 1)} reps, "
            f"{params.get('elapsed_s', '?')} s; 1-minute load average {load[0]} before, "
            f"{load[1]} after."
        )
        lines += ["", "| " + " | ".join(scenario["columns"]) + " |"]
        lines.append("|" + "---|" * len(scenario["columns"]))
        for row in scenario["rows"]:
            cells = (cell(row.get(column, "")) for column in scenario["columns"])
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"- {note}" for note in scenario["notes"]]
        lines += [""] + [f"![{name}]({file})" for file in scenario.get("chart_files", [])]
    return "\n".join(lines) + "\n"


def render_targets(scenarios: dict[str, Any]) -> list[str]:
    """Every judged row of every scenario as one Markdown table (empty if none)."""
    verdicts = _verdicts(scenarios)
    if not verdicts:
        return []
    lines = ["| scenario | row | verdict |", "|---|---|---|"]
    return lines + [f"| {name} | {row} | {verdict} |" for name, row, verdict in verdicts]


def _verdicts(scenarios: dict[str, Any]) -> list[tuple[str, str, str]]:
    found = []
    for name, scenario in scenarios.items():
        labels = scenario.get("label_columns") or scenario["columns"][:1]
        for row in scenario["rows"]:
            label = ", ".join(cell(row.get(column, "")) for column in labels)
            for key, value in row.items():
                if (key.startswith("verdict") or key.endswith("_target")) and value:
                    suffix = "" if key == "verdict" else f" ({key.removeprefix('verdict_')})"
                    found.append((name, f"{label}{suffix}", str(value)))
    return found


def cell(value: object) -> str:
    if isinstance(value, dict) and {"median", "min", "max"} <= value.keys():
        return f"{number(value['median'])} ({number(value['min'])}-{number(value['max'])})"
    if isinstance(value, Spread):
        return f"{number(value.median)} ({number(value.low)}-{number(value.high)})"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return number(value)
    return str(value)


def number(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if value != value:  # NaN: nothing was measured.
        return "n/a"
    return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
