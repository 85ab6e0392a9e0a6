"""The benchmark block of docs/performance.md: the latest run's targets and charts, between
markers. Only the text between the two markers changes; the rest of the page is hand-written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.report import render_targets

README = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
START = "<!-- bench:start (written by `make bench`; edit bench/readme.py instead) -->"
END = "<!-- bench:end -->"


def render_block(report: dict[str, Any], results_dir: Path, readme: Path) -> str:
    """The block for `report`, its links relative to the page it goes in."""
    relative = Path(os.path.relpath(results_dir.resolve(), readme.resolve().parent))
    machine = report["machine"]
    lines = [
        START,
        f"Latest run: {report['date']}, {machine['cpus']} CPUs, PostgreSQL "
        f"{machine['postgresql']}, Redis {machine['redis']}, everything on one machine. "
        f"Every table, note and raw figure: [`{relative / (report['date'] + '.md')}`]"
        f"({relative / (report['date'] + '.md')}).",
        "",
        *render_targets(report["scenarios"]),
        "",
    ]
    for name, scenario in report["scenarios"].items():
        lines += [f"![{name}]({relative / file})" for file in scenario.get("chart_files", [])]
    lines.append(END)
    return "\n".join(lines)


def update_readme(readme: Path, report: dict[str, Any], results_dir: Path) -> bool:
    """Replace the block in `readme`; False (and nothing written) if it has no markers."""
    text = readme.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return False
    block = render_block(report, results_dir, readme)
    readme.write_text(text[:start] + block + text[end + len(END) :])
    return True
