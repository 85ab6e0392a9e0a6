"""Resident memory of every process of a run, sampled at milestones, to show it stays flat."""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil

MIB = 1024 * 1024


def tree_rss(root: psutil.Process) -> int:
    """Bytes resident in `root` and all its descendants (a Dramatiq worker forks its workers)."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


@dataclass
class MemorySamples:
    """RSS per process name at each labelled milestone, in MiB."""

    roots: dict[str, psutil.Process]
    samples: dict[str, dict[str, float]] = field(default_factory=dict)

    def take(self, label: str) -> None:
        self.samples[label] = {name: tree_rss(root) / MIB for name, root in self.roots.items()}

    def growth(self, start: str, end: str) -> dict[str, float]:
        """MiB each process grew between two milestones."""
        return {name: self.samples[end][name] - self.samples[start][name] for name in self.roots}

    def table(self) -> str:
        labels = list(self.samples)
        lines = ["process      " + "".join(f"{label:>9}" for label in labels)]
        for name in self.roots:
            figures = "".join(f"{self.samples[label][name]:9.1f}" for label in labels)
            lines.append(f"{name:<13}{figures}")
        return "\n".join(lines)
