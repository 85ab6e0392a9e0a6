"""CPU burnt by idle processes: a process tree's user + system time from /proc, and Redis's own.

Polling for work costs CPU even when there is none: this is how the benchmarks weigh a shorter
poll (lower latency) against it. Linux only; figures are % of one core over a window.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path

import redis

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return raw[raw.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """`root` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds used so far by `root` and its live descendants."""
    total_ticks = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # After the name: state(0) ppid(1) … utime(11) stime(12).
            total_ticks += int(fields[11]) + int(fields[12])
    return total_ticks / TICKS_PER_S


def redis_cpu_s(client: redis.Redis) -> float:
    """The Redis server's own user + system CPU seconds so far."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def idle_cpu_pct(
    roots: Mapping[str, int], client: redis.Redis, window_s: float
) -> dict[str, float]:
    """% of one core each process tree (and, as `redis`, the Redis server) used over `window_s`."""
    before = {name: tree_cpu_s(pid) for name, pid in roots.items()}
    redis_before, started = redis_cpu_s(client), time.monotonic()
    await asyncio.sleep(window_s)
    elapsed_s = time.monotonic() - started
    used = {name: tree_cpu_s(pid) - before[name] for name, pid in roots.items()}
    used["redis"] = redis_cpu_s(client) - redis_before
    return {name: round(100 * seconds / elapsed_s, 2) for name, seconds in used.items()}
