"""The README's benchmark block: replaced between its markers, nothing else touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.readme import END, START, update_readme

REPORT: dict[str, Any] = {
    "date": "2026-01-02",
    "machine": {"cpus": 2, "postgresql": "18.4", "redis": "6.2.14"},
    "scenarios": {
        "relay_drain": {
            "columns": ["setup", "verdict"],
            "rows": [{"setup": "1 relay process", "verdict": "meets ≥ 0.25"}],
            "chart_files": ["2026-01-02-relay_drain-1.png"],
        },
        "e2e_drain": {
            "columns": ["variant", "verdict"],
            "rows": [{"variant": "scan-outbox", "verdict": "MISSES ≥ 3"}],
            "chart_files": [],
        },
    },
}


def test_block_between_markers_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    results = tmp_path / "bench" / "results"
    readme.write_text(f"# Title\n\nbefore\n\n{START}\nold figures\n{END}\n\nafter\n")

    assert update_readme(readme, REPORT, results)

    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n\n" + START)
    assert text.endswith(END + "\n\nafter\n")
    assert "old figures" not in text
    assert "| relay_drain | 1 relay process | meets ≥ 0.25 |" in text
    assert "| e2e_drain | scan-outbox | MISSES ≥ 3 |" in text
    assert "![relay_drain](bench/results/2026-01-02-relay_drain-1.png)" in text
    assert "(bench/results/2026-01-02.md)" in text

    # A second run replaces its own block instead of adding one.
    assert update_readme(readme, REPORT, results)
    assert readme.read_text() == text


def test_readme_without_markers_is_left_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    assert not update_readme(readme, REPORT, tmp_path)
    assert readme.read_text() == "# Title\n"
