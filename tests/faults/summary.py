"""The key under which a parallel worker hands its fault-suite sections to the controller."""

from __future__ import annotations

FAULT_SECTIONS = "fault_suite_sections"
