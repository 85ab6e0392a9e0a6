"""The scan's total time cap, shared by every DNS query and HTTP hop of one scan."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Budget:
    total_s: float
    deadline: float

    @classmethod
    def start(cls, total_s: float) -> Budget:
        return cls(total_s, time.monotonic() + total_s)

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def cap(self, step_s: float) -> float:
        """The time one step may take: its own limit, or less if the scan's cap is nearer."""
        return min(step_s, self.remaining_s())

    @property
    def exhausted_message(self) -> str:
        return f"scan time limit of {self.total_s:g}s reached"
