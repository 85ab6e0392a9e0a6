"""`python -m bench.bare_scan COUNT CONCURRENCY HANG_EVERY`: the scan function alone, COUNT
domains with at most CONCURRENCY at once, every HANG_EVERY-th a hanging target (0: none).

The baseline the worker's pipeline is measured against: the same scanner and settings (from
the environment), with no broker, database or logs. Prints scans per second as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from shared.settings import get_settings
from worker_service.scanner import scan_domain


def domain(index: int, hang_every: int) -> str:
    """The benchmark's target names (the pipeline's tasks use the same)."""
    if hang_every and index % hang_every == 0:
        return f"hang{index}.example.com"
    return f"s{index}.example.com"


async def scan_all(count: int, concurrency: int, hang_every: int) -> float:
    settings = get_settings()
    slots = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with slots:
            await scan_domain(domain(index, hang_every), {}, settings)

    started = time.monotonic()
    await asyncio.gather(*(one(index) for index in range(1, count + 1)))
    return count / (time.monotonic() - started)


if __name__ == "__main__":
    count, concurrency, hang_every = (int(arg) for arg in sys.argv[1:4])
    rate = asyncio.run(scan_all(count, concurrency, hang_every))
    print(json.dumps({"scans_per_s": rate}), flush=True)
