"""Each worker process's proof of progress, written to a file the probe server reads.

The probes are served by a Dramatiq fork, another process that cannot see a worker's threads.
So every worker process writes `progress-<pid>.json` in `PROMETHEUS_MULTIPROC_DIR` from a
coroutine on its event loop, every `PROGRESS_INTERVAL_S`: the time of that tick, and when each
of its consumers last turned (one fetch, or one idle wait, per turn) and whether it is inside a
broker call. A wedged loop, a stopped process or a dead consumer thread stops the file moving;
the fork judges the files with `assess`. Times are `time.monotonic()`: on Linux one clock
(CLOCK_MONOTONIC) for every process of the host, immune to wall-clock steps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dramatiq.asyncio import get_event_loop_thread
from dramatiq.broker import Broker
from dramatiq.middleware import Middleware
from dramatiq.worker import Worker

from shared import dramatiq_private
from shared.logging import get_logger

log = get_logger(__name__)

PROGRESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
FILE_PREFIX = "progress-"
# One tick a second: a stall is seen to the second, for one small file write per second.
PROGRESS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class ConsumerTurn:
    turned_at: float
    in_broker_call: bool


@dataclass(frozen=True)
class ProcessProgress:
    """What one worker process last wrote: its loop's tick and its consumers' turns."""

    pid: int
    ticked_at: float
    consumers: Mapping[str, ConsumerTurn]

    def to_json(self) -> dict[str, Any]:
        consumers = {
            queue: {"turned_at": turn.turned_at, "in_broker_call": turn.in_broker_call}
            for queue, turn in self.consumers.items()
        }
        return {"pid": self.pid, "ticked_at": self.ticked_at, "consumers": consumers}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessProgress:
        consumers = {
            str(queue): ConsumerTurn(float(turn["turned_at"]), bool(turn["in_broker_call"]))
            for queue, turn in data["consumers"].items()
        }
        return cls(int(data["pid"]), float(data["ticked_at"]), consumers)


@dataclass(frozen=True)
class Assessment:
    """The probes' verdict: `alive` for /livez, `progressing` (with the broker up) for /readyz."""

    alive: bool
    progressing: bool
    problems: list[str]
    processes: list[dict[str, Any]]


def assess(processes: Iterable[ProcessProgress], now: float, max_age_s: float) -> Assessment:
    """Alive: every process's loop ticked and each consumer turned within `max_age_s`, a consumer
    inside a broker call excepted (the broker's outage is readiness's concern, and a restart
    would not cure it). Progressing: alive, and no consumer waits on the broker that long.
    No process at all is neither."""
    alive, progressing = True, True
    problems: list[str] = []
    seen: list[dict[str, Any]] = []
    for process in sorted(processes, key=lambda p: p.pid):
        loop_age_s = max(0.0, now - process.ticked_at)
        ages = {q: max(0.0, now - turn.turned_at) for q, turn in process.consumers.items()}
        seen.append(
            {
                "pid": process.pid,
                "loop_age_s": round(loop_age_s, 3),
                "consumer_age_s": {q: round(age, 3) for q, age in ages.items()},
            }
        )
        if loop_age_s > max_age_s:
            alive = progressing = False
            problems.append(f"pid {process.pid}: event loop silent for {loop_age_s:.1f}s")
            continue
        for queue, age_s in ages.items():
            if age_s <= max_age_s:
                continue
            progressing = False
            if process.consumers[queue].in_broker_call:
                problems.append(
                    f"pid {process.pid}: {queue} waiting on the broker for {age_s:.1f}s"
                )
            else:
                alive = False
                problems.append(f"pid {process.pid}: {queue} consumer silent for {age_s:.1f}s")
    if not seen:
        alive = progressing = False
        problems.append("no worker process has reported progress")
    return Assessment(alive, progressing, problems, seen)


def progress_path(directory: Path, pid: int) -> Path:
    return directory / f"{FILE_PREFIX}{pid}.json"


def write_progress(directory: Path, progress: ProcessProgress) -> None:
    """Replace the process's file atomically: a reader sees the old content or the new."""
    target = progress_path(directory, progress.pid)
    partial = target.with_name(f".{target.name}.{threading.get_ident()}")
    partial.write_text(json.dumps(progress.to_json()))
    os.replace(partial, target)


def read_progress(directory: Path) -> list[ProcessProgress]:
    """Every worker process's last progress; a file removed while read is skipped."""
    found = []
    for path in directory.glob(f"{FILE_PREFIX}*.json"):
        try:
            found.append(ProcessProgress.from_json(json.loads(path.read_text())))
        except FileNotFoundError:
            continue
    return found


def clear_progress(directory: Path) -> None:
    """Forget a previous run's processes (their files would read as stalled)."""
    for stale in directory.glob(f"{FILE_PREFIX}*.json"):
        stale.unlink(missing_ok=True)


@dataclass
class ConsumerTurns:
    """When each consumer of this process last entered or left a turn; thread-safe."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    turns: dict[str, ConsumerTurn] = field(default_factory=dict)

    def expect(self, queues: Iterable[str]) -> None:
        """Count consumers from now on, so one that never turns is seen to be silent."""
        now = time.monotonic()
        with self.lock:
            for queue in queues:
                self.turns.setdefault(queue, ConsumerTurn(now, in_broker_call=False))

    def enter(self, queue: str) -> None:
        with self.lock:
            self.turns[queue] = ConsumerTurn(time.monotonic(), in_broker_call=True)

    def leave(self, queue: str) -> None:
        with self.lock:
            self.turns[queue] = ConsumerTurn(time.monotonic(), in_broker_call=False)

    def snapshot(self) -> dict[str, ConsumerTurn]:
        with self.lock:
            return dict(self.turns)


class Progress(Middleware):
    """Writes this worker process's progress file from its event loop while the worker runs."""

    def __init__(self, turns: ConsumerTurns) -> None:
        self.turns = turns
        given = os.environ.get(PROGRESS_DIR_ENV)
        self.directory = Path(given) if given else None
        self.ticking: concurrent.futures.Future[None] | None = None

    def snapshot(self) -> ProcessProgress:
        return ProcessProgress(os.getpid(), time.monotonic(), self.turns.snapshot())

    def write(self) -> None:
        assert self.directory is not None
        write_progress(self.directory, self.snapshot())

    async def _tick(self) -> None:
        assert self.directory is not None
        while True:
            try:
                # The tick is taken on the loop, the file written off it: a disk busy with the
                # database's flushes held the loop, and every run on it, for the write.
                await asyncio.to_thread(write_progress, self.directory, self.snapshot())
            except OSError as exc:
                # The file then goes stale and the probes fail: this says why.
                log.warning("worker_progress_unwritable", error=str(exc))
            await asyncio.sleep(PROGRESS_INTERVAL_S)

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        loop_thread = get_event_loop_thread()
        if self.directory is None or loop_thread is None:
            return
        self.turns.expect(dramatiq_private.consumer_threads(worker))
        # Written before the boot completes, so the probe server (started after every worker
        # process has booted) never finds a process missing.
        self.write()
        self.ticking = asyncio.run_coroutine_threadsafe(self._tick(), loop_thread.loop)

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        if self.ticking is not None:
            self.ticking.cancel()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        if self.directory is not None and self.ticking is not None:
            progress_path(self.directory, os.getpid()).unlink(missing_ok=True)
