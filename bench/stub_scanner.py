"""A scan that does nothing (`SCAN_SCANNER=bench.stub_scanner:scan`): benchmarks measure the
pipeline (check, claim, lease, result write), not the network."""

from __future__ import annotations

from typing import Any

from shared.settings import Settings


async def scan(domain: str, config: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A minimal successful result for `domain`, at once."""
    return {"domain": domain, "findings": [], "elapsed_ms": 0}


SCANNER_PATH = f"{__name__}:{scan.__name__}"
