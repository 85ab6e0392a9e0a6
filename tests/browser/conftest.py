"""Browser tests run in Debian's Chromium; without it each one is skipped, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")

# Evaluated before any fixture, so a machine without Chromium starts no stack for nothing.
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing: `apt-get install chromium` to run the browser tests",
)
