"""Scanners a worker process loads through SCAN_SCANNER in end-to-end tests."""

from __future__ import annotations

import time
from typing import Any

from shared.settings import Settings


async def block_the_loop(domain: str, config: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A scan that holds its event loop for `config["block_s"]` seconds, as a scan stuck in
    synchronous code would: no other coroutine of the process runs meanwhile."""
    blocked_s = float(config["block_s"])
    time.sleep(blocked_s)  # noqa: ASYNC251 - blocking the loop is this scanner's purpose
    return {"domain": domain, "blocked_s": blocked_s}
