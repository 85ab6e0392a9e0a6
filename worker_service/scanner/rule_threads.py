"""Running a scan's content rules off the event loop, on a small pool of threads.

Rules are CPU work of up to the rule budget (`rules.apply_rules`); on the worker's event loop
they would stall every other scan of the process, its lease renewals and its heartbeat. RE2
releases the GIL while it searches, so the loop keeps running beside them. The pool is the
process's own: rules queued behind others never hold up the threads DNS lookups or the
database driver borrow from the loop's default executor.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from worker_service.scanner import rules

# Two scans' rules at once per worker process: a worker process's event loop is one core's
# worth of work, so two rule threads keep the process within the two cores scans were sized on
# (docs/performance.md, "Content rules"); a deployment scales with processes.
RULE_THREADS = 2
_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(RULE_THREADS, thread_name_prefix="scan-rules")
        return _executor


async def apply_rules(
    text: str, config: Mapping[str, Any], *, budget_s: float, not_after: float
) -> list[dict[str, Any]]:
    """`rules.apply_rules` on a rule thread, its budget counted from when it starts.

    Rules still waiting for a thread at the monotonic time `not_after` are not run: each gets a
    `rule_not_applied` finding. Rules already running end within their budget and one search.
    """
    if not rules.has_rules(config):
        return []
    future = _pool().submit(rules.apply_rules, text, config, budget_s=budget_s, not_after=not_after)
    waiting = asyncio.wrap_future(future)
    done, _ = await asyncio.wait({waiting}, timeout=max(0.0, not_after - time.monotonic()))
    if not done and future.cancel():
        return rules.none_applied(config, "scan time limit reached before the rules could run")
    return await waiting
