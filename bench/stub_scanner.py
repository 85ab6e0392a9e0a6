"""Scans that do nothing (`SCAN_SCANNER=bench.stub_scanner:scan`): benchmarks measure the
pipeline (check, claim, lease, result write), not the network. `slow_scan` waits first, for
`BENCH_SCAN_DELAY_S` seconds, so tasks queue up behind busy workers."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from shared.settings import Settings

DELAY_ENV = "BENCH_SCAN_DELAY_S"


async def scan(domain: str, config: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A minimal successful result for `domain`, at once."""
    return {"domain": domain, "findings": [], "elapsed_ms": 0}


async def slow_scan(domain: str, config: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A minimal successful result for `domain` after `BENCH_SCAN_DELAY_S` seconds (0 if unset)."""
    delay_s = float(os.environ.get(DELAY_ENV, "0"))
    await asyncio.sleep(delay_s)
    return {"domain": domain, "findings": [], "elapsed_ms": int(delay_s * 1000)}


SCANNER_PATH = f"{__name__}:{scan.__name__}"
SLOW_SCANNER_PATH = f"{__name__}:{slow_scan.__name__}"
