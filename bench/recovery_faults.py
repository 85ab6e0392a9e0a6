"""The faults of the `recovery` scenario, each run from a clean slate on real processes.

Times are taken on this machine's one clock: the fault's moment in this process right after
the kill or FLUSHALL returns; a task's start and end as the database dated them (`started_at`
is the claim's `now()`, `finished_at` the final write's, an outbox row's `created_at` its
transaction's start).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import TextClause, text

from bench import stub_scanner
from bench.common import BenchContext, Process, fill_tasks, start_relay, start_worker
from shared import keys, metrics
from shared.db import tasks
from shared.messages import scan_entry

POLL_S = 0.2
SETTLE_DEADLINE_S = 180.0
START_DEADLINE_S = 60.0

# Broker loss: scans slow enough that the queue outlives the loss by many leader checks.
LOSS_SCAN_S = 0.5
LOSS_CONCURRENCY = 8
# A worker holds up to twice its concurrency here (running, and as many prefetched): the loss
# comes once the worker has taken that many and is in its steady state.
LOSS_STARTED_BEFORE = 2 * LOSS_CONCURRENCY

# Worker kill: the killed worker's slots all mid-scan and its prefetch full; the survivor
# has a free slot for every one of them, so no recovered task waits for one.
KILL_SCAN_S = 15.0
KILL_CONCURRENCY = 8
KILL_TASKS = 2 * KILL_CONCURRENCY  # what one worker holds: a running and a prefetched per slot
SURVIVOR_CONCURRENCY = KILL_TASKS

# Relay kill: a steady stream of creates, the leader relay killed a few seconds in.
CREATE_PER_S = 20.0
CREATE_WINDOW_S = 8.0
RELAY_KILL_AT_S = 3.0
# "Around the kill": tasks committed from this long before it to this long after.
AROUND_BEFORE_S = 1.0
AROUND_AFTER_S = 3.0

_LEADER_LINE = re.compile(rf"^{metrics.PREFIX}_relay_leader (\S+)$", re.MULTILINE)

_UNFINISHED_SQL = text(
    "SELECT count(*) FROM tasks WHERE status NOT IN ('succeeded', 'failed', 'cancelled')"
)
_QUEUED_SQL = text("SELECT count(*) FROM tasks WHERE status = 'queued'")
_PROGRESS_SQL = text(
    """
    SELECT count(*) FILTER (WHERE status = 'pending'),
           count(*) FILTER (WHERE status = 'running'),
           count(*) FILTER (WHERE started_at IS NOT NULL),
           (SELECT count(*) FROM broker_state)
    FROM tasks
    """
)
# New outbox rows after the mark are the leader's re-dispatches (nothing else creates any).
_LOSS_SQL = text(
    """
    SELECT (SELECT extract(epoch FROM max(finished_at))::float8 FROM tasks),
           (SELECT extract(epoch FROM min(created_at))::float8 FROM outbox
            WHERE created_at > to_timestamp(:mark)),
           (SELECT extract(epoch FROM max(published_at))::float8 FROM outbox
            WHERE created_at > to_timestamp(:mark)),
           (SELECT coalesce(sum(attempts), 0) - count(*) FROM tasks),
           (SELECT count(*) FROM tasks WHERE status <> 'succeeded')
    """
)
_STARTS_SQL = text(
    "SELECT id, status, extract(epoch FROM started_at)::float8, lease_owner FROM tasks"
)
_BACKLOG_SQL = text(
    """
    SELECT count(*) FILTER (WHERE status = 'failed' OR attempts > 1),
           count(*) FILTER (WHERE redispatches > 0),
           count(*) FILTER (WHERE status = 'succeeded')
    FROM tasks
    """
)


async def _row(ctx: BenchContext, stmt: TextClause, **params: Any) -> tuple[Any, ...]:
    async with ctx.sessionmaker() as session:
        return tuple((await session.execute(stmt, params)).one())


async def _until(
    check: Callable[[], Awaitable[bool]],
    processes: Sequence[Process],
    what: str,
    deadline_s: float = SETTLE_DEADLINE_S,
) -> None:
    """Poll `check` until true; an error if a process exits or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while not await check():
        for process in processes:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.name} exited; see {process.log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {deadline_s:g} s")
        await asyncio.sleep(POLL_S)


async def _all_terminal(ctx: BenchContext) -> bool:
    return bool((await _row(ctx, _UNFINISHED_SQL))[0] == 0)


def _live_workers(ctx: BenchContext) -> int:
    client = ctx.redis()
    try:
        members: list[bytes] = client.zrange(keys.BROKER_HEARTBEATS_KEY, 0, -1)  # type: ignore[assignment]
    finally:
        client.close()
    prefix = keys.WORKER_BROKER_ID_PREFIX.encode()
    return sum(1 for member in members if member.startswith(prefix))


def _is_leader(process: Process) -> bool:
    try:
        body = httpx.get(f"http://127.0.0.1:{process.health_port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return False
    match = _LEADER_LINE.search(body)
    return match is not None and float(match.group(1)) == 1.0


def _slow_worker(ctx: BenchContext, name: str, concurrency: int, scan_s: float) -> Process:
    """A worker of `concurrency` slow scans in flight with as many prefetched."""
    return start_worker(
        ctx,
        name,
        concurrency,
        SCAN_SCANNER=stub_scanner.SLOW_SCANNER_PATH,
        SCAN_WORKER_PREFETCH=str(concurrency),
        **{stub_scanner.DELAY_ENV: str(scan_s)},
    )


def _known(started: float | None) -> float:
    if started is None:
        raise RuntimeError("a task waited for never started")
    return started


def _stop(processes: Sequence[Process]) -> None:
    for process in processes:
        process.stop()


# --- broker data loss ------------------------------------------------------------------


@dataclass(frozen=True)
class LossRun:
    """From the loss (or the same moment of a run without one) to the last task's end; with a
    loss, also to the leader's first re-dispatch and to the last one's publication."""

    terminal_s: float
    detected_s: float | None
    republished_s: float | None
    extra_attempts: int
    not_succeeded: int


async def broker_loss(ctx: BenchContext, count: int, *, lose: bool) -> LossRun:
    """`count` tasks behind one slow worker; FLUSHALL (if `lose`) once the leader knows the
    broker epoch and the worker's prefetch is full; then wait for every task to end."""
    await ctx.reset()
    async with ctx.sessionmaker() as session, session.begin():
        await fill_tasks(session, count, ctx.settings.queue_name)
    processes = [_slow_worker(ctx, "recovery-loss-worker", LOSS_CONCURRENCY, LOSS_SCAN_S)]
    try:
        processes.append(start_relay(ctx, "recovery-loss-relay"))

        async def steady() -> bool:
            _pending, _running, started, epochs = await _row(ctx, _PROGRESS_SQL)
            return bool(epochs and started >= LOSS_STARTED_BEFORE)

        await _until(steady, processes, "the worker to be busy and the epoch known")
        if lose:
            client = ctx.redis()
            try:
                client.flushall()
            finally:
                client.close()
        mark = time.time()
        await _until(lambda: _all_terminal(ctx), processes, "every task to end")
    finally:
        _stop(processes)
    last_end, first_again, last_again, extra, not_succeeded = await _row(ctx, _LOSS_SQL, mark=mark)
    return LossRun(
        terminal_s=last_end - mark,
        detected_s=None if first_again is None else first_again - mark,
        republished_s=None if last_again is None else last_again - mark,
        extra_attempts=int(extra),
        not_succeeded=int(not_succeeded),
    )


# --- worker SIGKILL --------------------------------------------------------------------


@dataclass(frozen=True)
class KillRun:
    """Seconds from the kill to each of the killed worker's tasks starting again, split by
    whether it was mid-scan (running) or waiting in the worker's prefetch at the kill."""

    running_s: list[float]
    prefetched_s: list[float]
    kill_after_claim_s: float


async def worker_kill(ctx: BenchContext, kill_after_claim_s: float) -> KillRun:
    """A worker mid-scan in all its slots, its prefetch full, SIGKILLed about
    `kill_after_claim_s` after its first claim while a second worker stands idle."""
    await ctx.reset()
    async with ctx.sessionmaker() as session, session.begin():
        await fill_tasks(session, KILL_TASKS, ctx.settings.queue_name)
    victim = _slow_worker(ctx, "recovery-kill-victim", KILL_CONCURRENCY, KILL_SCAN_S)
    processes = [victim, start_relay(ctx, "recovery-kill-relay")]
    try:

        async def victim_full() -> bool:
            pending, running, _started, _epochs = await _row(ctx, _PROGRESS_SQL)
            return bool(pending == 0 and running == KILL_CONCURRENCY and _queue_length(ctx) == 0)

        await _until(victim_full, processes, "the worker to hold every task", START_DEADLINE_S)
        first_claim = min(s for _id, _st, s, _o in await _starts(ctx) if s is not None)
        processes.append(_slow_worker(ctx, "recovery-kill-survivor", SURVIVOR_CONCURRENCY, 1.0))

        async def survivor_ready() -> bool:
            return _live_workers(ctx) >= 2

        await _until(survivor_ready, processes, "the second worker", START_DEADLINE_S)
        await asyncio.sleep(max(0.0, first_claim + kill_after_claim_s - time.time()))
        before = {task_id: status for task_id, status, _s, _o in await _starts(ctx)}
        processes.remove(victim)
        victim.kill()
        killed_at = time.time()

        async def all_again() -> bool:
            return all(s is not None and s > killed_at for _i, _st, s, _o in await _starts(ctx))

        await _until(all_again, processes, "every task of the killed worker to start again")
    finally:
        for process in processes:
            process.kill()
    running: list[float] = []
    prefetched: list[float] = []
    for task_id, _status, started, _owner in await _starts(ctx):
        again_s = round(_known(started) - killed_at, 2)
        (running if before[task_id] == "running" else prefetched).append(again_s)
    return KillRun(running, prefetched, round(killed_at - first_claim, 2))


def _queue_length(ctx: BenchContext) -> int:
    client = ctx.redis()
    try:
        return int(client.llen(keys.broker_queue_key(ctx.settings.queue_name)))
    finally:
        client.close()


async def _starts(ctx: BenchContext) -> list[tuple[uuid.UUID, str, float | None, str | None]]:
    async with ctx.sessionmaker() as session:
        return [tuple(row) for row in (await session.execute(_STARTS_SQL)).all()]


# --- relay SIGKILL ---------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRun:
    """Commit → start of every task of a steady stream, keyed by its commit's offset from the
    kill (or from the moment the kill would have come)."""

    latencies: list[tuple[float, float]]

    def around(self) -> list[float]:
        return [
            latency
            for offset, latency in self.latencies
            if -AROUND_BEFORE_S <= offset <= AROUND_AFTER_S
        ]


async def relay_kill(ctx: BenchContext, *, kill: bool) -> StreamRun:
    """Two relays and an idle worker; tasks created at `CREATE_PER_S` for `CREATE_WINDOW_S`;
    the leader relay SIGKILLed (if `kill`) `RELAY_KILL_AT_S` in."""
    await ctx.reset()
    processes = [start_worker(ctx, "recovery-stream-worker")]
    try:
        relays = [start_relay(ctx, f"recovery-stream-relay-{name}") for name in "ab"]
        processes += relays

        async def ready() -> bool:
            return _live_workers(ctx) >= 1 and any(_is_leader(relay) for relay in relays)

        await _until(ready, processes, "a leader relay and the worker", START_DEADLINE_S)
        leader = next(relay for relay in relays if _is_leader(relay))
        committed, kill_at = await _create_stream(ctx, leader if kill else None, processes)
        await _until(lambda: _all_terminal(ctx), processes, "every task to end")
    finally:
        _stop(processes)
    starts = {task_id: started for task_id, _st, started, _o in await _starts(ctx)}
    return StreamRun(
        [(at - kill_at, _known(starts[task_id]) - at) for task_id, at in committed.items()]
    )


async def _create_stream(
    ctx: BenchContext, victim: Process | None, processes: list[Process]
) -> tuple[dict[uuid.UUID, float], float]:
    """Tasks committed on a fixed schedule; their commit times and the kill's moment."""
    committed: dict[uuid.UUID, float] = {}
    started = time.time()
    kill_at = started + RELAY_KILL_AT_S
    for index in range(int(CREATE_PER_S * CREATE_WINDOW_S)):
        due = started + index / CREATE_PER_S
        if victim is not None and due >= kill_at:
            processes.remove(victim)
            victim.kill()
            kill_at, victim = time.time(), None
        await asyncio.sleep(max(0.0, due - time.time()))
        task_id = uuid.uuid4()
        new = tasks.NewTask(
            user_id=1, target_domain=f"k{index}.example.com", config={}, max_attempts=3
        )
        entry = scan_entry(task_id, ctx.settings.queue_name)
        async with ctx.sessionmaker() as session, session.begin():
            await tasks.insert_task_with_message(session, task_id, new, entry)
        committed[task_id] = time.time()
    return committed, kill_at


# --- backlog older than queued_stale_s ---------------------------------------------------


@dataclass(frozen=True)
class BacklogRun:
    harmed: int  # failed, or charged an attempt beyond the one run
    sent_again: int
    succeeded: int


async def old_backlog(ctx: BenchContext, count: int, stale_s: float, queued_s: float) -> BacklogRun:
    """`count` tasks of one client with no worker for `queued_s` (several `stale_s`, the
    relay's SCAN_QUEUED_STALE_S): its window's worth queued in the broker, the rest waiting
    in the outbox; then drained by one worker."""
    await ctx.reset()
    async with ctx.sessionmaker() as session, session.begin():
        await fill_tasks(session, count, ctx.settings.queue_name)
    processes = [start_relay(ctx, "recovery-backlog-relay", SCAN_QUEUED_STALE_S=str(stale_s))]
    try:

        async def window_queued() -> bool:
            queued = (await _row(ctx, _QUEUED_SQL))[0]
            return bool(queued >= min(count, ctx.settings.relay_client_window))

        await _until(window_queued, processes, "the client's window to be queued")
        await asyncio.sleep(queued_s)
        processes.append(start_worker(ctx, "recovery-backlog-worker"))
        await _until(lambda: _all_terminal(ctx), processes, "the backlog to drain")
    finally:
        _stop(processes)
    harmed, sent_again, succeeded = await _row(ctx, _BACKLOG_SQL)
    return BacklogRun(int(harmed), int(sent_again), int(succeeded))
