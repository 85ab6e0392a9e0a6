"""Verify, claim, scan, finish: a task's life on a worker, every write fenced by the lease token.

The claim is one statement for 1..N tasks (`shared.db.claims.claim_tasks`, under the targets'
locks: `claim_under_locks`). Runs that start together claim in one transaction
(`claim_batch`, coalesced by `Claimer`); a task a batch left alone is claimed on its own by the
same statement, and if that claims nothing either, `_claim` finds out why and acts on it.

Problems of the target are findings in a successful result. An infrastructure error during the
run (a worker-side timeout, the database or network failing under us) sends the task round the
outbox again with exponential backoff until its attempts are used up; a scan that crashes for
any other reason is a bug and fails the task at once.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from shared import backoff, metrics
from shared.db import claims, completions, outage, tasks
from shared.db.claims import Claim
from shared.db.completions import Completion
from shared.db.engine import single_statement
from shared.db.models import TaskStatus
from shared.logging import get_logger
from shared.messages import scan_entry
from shared.settings import Settings
from worker_service import existence
from worker_service.claimer import Claimer
from worker_service.completer import Completer
from worker_service.lease import HeldLease, LeaseKeeper, LeaseLost
from worker_service.runtime import WorkerRuntime

log = get_logger(__name__)
T = TypeVar("T")

INFRASTRUCTURE_ERRORS = (OSError, OperationalError, InterfaceError)
# The scanner bounds itself by `total_timeout_s`; past this grace the worker cuts it off.
SCAN_GRACE_S = 5.0
# Room for the claim and the final write on a slow database, within Dramatiq's time limit.
DATABASE_ALLOWANCE_S = 60.0
WRITE_ATTEMPTS = 3
WRITE_RETRY_S = 0.5
# A restarting database takes a second or two; the claim rides out longer outages for
# `worker_claim_retry_s`, trying again after these (jittered) pauses.
CLAIM_RETRY_BASE_S = 0.25
CLAIM_RETRY_MAX_S = 5.0


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"  # sent round the outbox again after an infrastructure error
    DEFERRED = "deferred"  # too many live scans of the target: sent round again after a delay
    CANCELLED = "cancelled"  # noticed at a lease renewal or the final write; nothing written
    LEASE_LOST = "lease_lost"  # another owner holds the task now; our result is dropped
    SKIPPED = "skipped"  # nothing to claim: a duplicate, stale or unknown message


def actor_time_limit_ms(settings: Settings) -> int:
    """A Dramatiq time limit that can never cut a run short: the claim's outage budget, the
    existence check's longest wait in the last claim attempt and the pause before it, the
    scan's own cap and grace, room for the database."""
    claim_s = settings.worker_claim_retry_s + CLAIM_RETRY_MAX_S + existence_wait_s(settings)
    return int((claim_s + settings.total_timeout_s + SCAN_GRACE_S + DATABASE_ALLOWANCE_S) * 1000)


def existence_wait_s(settings: Settings) -> float:
    """The longest the existence check can wait for a task to become visible."""
    return existence.longest_wait_s(
        settings.existence_check_attempts,
        settings.existence_check_delay_s,
        settings.existence_check_backoff,
    )


def retry_backoff_s(attempts: int, settings: Settings) -> float:
    """Delay before the next attempt after `attempts` tries: doubling, capped, jittered."""
    return backoff.backoff_s(attempts, settings.retry_backoff_base_s, settings.retry_backoff_max_s)


async def run_task(
    runtime: WorkerRuntime, task_id: uuid.UUID, request_id: str | None = None
) -> Outcome:
    """Run the task once if this call wins the claim; otherwise write nothing but a deferral."""
    claim: Claim | Outcome | None = await claimer_of(runtime).claim(task_id)
    if claim is None:
        claim = await _verify_and_claim(runtime, task_id, request_id)
    if isinstance(claim, Outcome):
        outcome = claim
    else:
        outcome = await _run_claimed(runtime, claim[0], claim[1], request_id)
    _finished_counter(outcome).inc()
    return outcome


# Each outcome's counter, looked up once: `labels()` takes a lock and builds a key per call.
_FINISHED_COUNTERS: dict[Outcome, Any] = {}


def _finished_counter(outcome: Outcome) -> Any:
    counter = _FINISHED_COUNTERS.get(outcome)
    if counter is None:
        counter = _FINISHED_COUNTERS[outcome] = metrics.TASKS_FINISHED.labels(outcome=outcome.value)
    return counter


async def claim_under_locks(
    runtime: WorkerRuntime,
    session: AsyncSession,
    task_ids: list[uuid.UUID],
    *,
    wait: bool = False,
) -> dict[uuid.UUID, Claim]:
    """The claim: lock the tasks' targets, then claim what politeness allows (caller commits).
    A lock held longer than `target_lock_timeout_s` raises (`claims.is_lock_timeout`)."""
    settings = runtime.settings
    await claims.lock_targets(session, task_ids, settings.target_lock_timeout_s)
    limit, lease_s = settings.per_target_concurrency, settings.worker_lease_s
    return await claims.claim_tasks(session, task_ids, limit, runtime.owner, lease_s, wait=wait)


async def claim_batch(runtime: WorkerRuntime, task_ids: list[uuid.UUID]) -> dict[uuid.UUID, Claim]:
    """The claims of runs that started together, committed in one transaction of their own."""
    async with runtime.sessionmaker() as session, session.begin():
        return await claim_under_locks(runtime, session, task_ids)


async def _verify_and_claim(
    runtime: WorkerRuntime, task_id: uuid.UUID, request_id: str | None
) -> Claim | Outcome:
    """Verify and claim, tried again from the start with backoff while the database is out,
    for up to `worker_claim_retry_s`. A longer outage raises: Dramatiq moves the message to
    its dead letters, and the relay leader, which checks that every queued task's message is
    still in the broker, sends the task again as soon as the database answers."""
    deadline = time.monotonic() + runtime.settings.worker_claim_retry_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _verify_and_claim_once(runtime, task_id, request_id)
        except Exception as exc:
            # The transaction died with its connection, so nothing of it was committed: unless
            # the COMMIT itself was lost in flight, in which case the retry finds the task
            # running under a live lease and skips it until that lease expires.
            if not outage.is_outage(exc):
                raise
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                log.error(
                    "task_claim_abandoned",
                    task_id=str(task_id),
                    attempts=attempt,
                    error=type(exc).__name__,
                    left_to="the relay leader, once the database is back",
                )
                raise
            delay_s = min(left_s, backoff.backoff_s(attempt, CLAIM_RETRY_BASE_S, CLAIM_RETRY_MAX_S))
            log.warning(
                "task_claim_failed",
                task_id=str(task_id),
                attempt=attempt,
                error=type(exc).__name__,
                retry_in_s=round(delay_s, 3),
            )
            await asyncio.sleep(delay_s)


async def _verify_and_claim_once(
    runtime: WorkerRuntime, task_id: uuid.UUID, request_id: str | None
) -> Claim | Outcome:
    """The existence check's look and the claim in one transaction on one connection."""
    async with runtime.sessionmaker() as session:
        sighting = await existence.verify_task(runtime, session, task_id)
        if sighting is None:
            return Outcome.SKIPPED
        claim = await _claim(runtime, session, task_id, sighting, request_id)
        await session.commit()
    return claim


async def _claim(
    runtime: WorkerRuntime,
    session: AsyncSession,
    task_id: uuid.UUID,
    sighting: claims.TaskSighting,
    request_id: str | None,
) -> Claim | Outcome:
    """The claim for this one task, waiting for its row; if it claims nothing, why: a busy
    target defers the task, no attempt left fails it (caller commits)."""
    if not sighting.claimable:
        log.info("task_not_claimable", task_id=str(task_id))
        return Outcome.SKIPPED
    settings = runtime.settings
    try:
        # The target's lock is held to commit: a later claim of it counts ours.
        claimed = await claim_under_locks(runtime, session, [task_id], wait=True)
    except DBAPIError as exc:
        if not claims.is_lock_timeout(exc):
            raise
        # Another claim of this target holds the lock (stalled, or its worker frozen): wait
        # in the outbox instead of blocking this worker, in a transaction of its own.
        await session.rollback()
        return await _defer(session, settings, task_id, request_id, "lock_timeout")
    if task_id in claimed:
        return claimed[task_id]
    live = await claims.count_live_scans(session, sighting.target_domain, task_id)
    if live >= settings.per_target_concurrency:
        log.info("task_target_busy", task_id=str(task_id), live_scans=live)
        return await _defer(session, settings, task_id, request_id, "politeness")
    # Not busy now: a scan of the target ended since the claim looked. Under the target's
    # lock nobody else can claim it meanwhile, so this second look is the last.
    limit, lease_s = settings.per_target_concurrency, settings.worker_lease_s
    claimed = await claims.claim_tasks(session, [task_id], limit, runtime.owner, lease_s, wait=True)
    if task_id in claimed:
        return claimed[task_id]
    if await claims.fail_exhausted_task(session, task_id):
        log.warning("task_attempts_exhausted", task_id=str(task_id))
        return Outcome.FAILED
    return Outcome.SKIPPED


async def _defer(
    session: AsyncSession,
    settings: Settings,
    task_id: uuid.UUID,
    request_id: str | None,
    reason: str,
) -> Outcome:
    # Jitter spreads the deferred scans of one busy domain instead of returning them together.
    delay_s = settings.politeness_delay_s * random.uniform(1.0, 1.5)
    entry = scan_entry(task_id, settings.queue_name, request_id)
    if not await claims.defer_task(session, task_id, entry, delay_s):
        return Outcome.SKIPPED
    metrics.TASKS_DEFERRED.labels(reason=reason).inc()
    log.info("task_deferred", task_id=str(task_id), reason=reason, retry_in_s=round(delay_s, 3))
    return Outcome.DEFERRED


async def _run_claimed(
    runtime: WorkerRuntime,
    task: claims.ClaimedTask,
    lease_token: uuid.UUID,
    request_id: str | None,
) -> Outcome:
    keeper = keeper_of(runtime)
    held = keeper.hold(task.id, lease_token)
    try:
        return await _run_held(runtime, task, held, request_id)
    finally:
        keeper.release(held)


async def _run_held(
    runtime: WorkerRuntime, task: claims.ClaimedTask, held: HeldLease, request_id: str | None
) -> Outcome:
    log.debug("task_started", task_id=str(task.id), attempt=task.attempts)
    if task.attempts == 1 and task.started_at is not None:
        metrics.COMMIT_TO_START.observe((task.started_at - task.created_at).total_seconds())
    lease_token = held.token
    started = time.perf_counter()
    try:
        async with held.fence():
            result = await _bounded_scan(runtime, task)
    except LeaseLost:
        return await _lease_gone(runtime, task.id)
    except INFRASTRUCTURE_ERRORS as exc:
        reason = _describe(exc)
        log.warning("scan_infrastructure_error", task_id=str(task.id), error=reason)
        return await _retry_or_fail(runtime, task, lease_token, reason, request_id)
    except Exception as exc:  # the scanner reports target problems as findings, so this is a bug
        log.exception("scan_crashed", task_id=str(task.id))
        error = f"scan error: {type(exc).__name__}"
        return await _finish(runtime, task, lease_token, TaskStatus.FAILED, None, error)
    finally:
        metrics.SCAN_DURATION.observe(time.perf_counter() - started)
    return await _finish(runtime, task, lease_token, TaskStatus.SUCCEEDED, result, None)


async def _bounded_scan(runtime: WorkerRuntime, task: claims.ClaimedTask) -> dict[str, Any]:
    """The scan, cut off (TimeoutError: a worker-side timeout) if it overruns its own cap."""
    async with asyncio.timeout(runtime.settings.total_timeout_s + SCAN_GRACE_S):
        return await runtime.scanner(task.target_domain, task.config, runtime.settings)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "worker-side timeout"
    return f"{type(exc).__name__}: {exc}"[:500]


async def _retry_or_fail(
    runtime: WorkerRuntime,
    task: claims.ClaimedTask,
    lease_token: uuid.UUID,
    reason: str,
    request_id: str | None,
) -> Outcome:
    if task.attempts >= task.max_attempts:
        error = f"gave up after {task.attempts} attempts: {reason}"
        return await _finish(runtime, task, lease_token, TaskStatus.FAILED, None, error)
    settings = runtime.settings
    delay_s = retry_backoff_s(task.attempts, settings)
    entry = scan_entry(task.id, settings.queue_name, request_id)

    async def requeue(session: AsyncSession) -> bool:
        return await claims.requeue_task(session, task.id, lease_token, reason, entry, delay_s)

    if not await _write(runtime, requeue):
        return await _lease_gone(runtime, task.id)
    log.warning(
        "task_retry_scheduled",
        task_id=str(task.id),
        attempt=task.attempts,
        retry_in_s=round(delay_s, 3),
        error=reason,
    )
    return Outcome.RETRYING


async def _finish(
    runtime: WorkerRuntime,
    task: claims.ClaimedTask,
    lease_token: uuid.UUID,
    status: TaskStatus,
    result: dict[str, Any] | None,
    error: str | None,
) -> Outcome:
    """The run's end, written with the ends of other runs finishing at the same moment."""
    end = Completion(task.id, lease_token, status, result, error, task.batch_id, task.may_call_back)
    if not await completer_of(runtime).finish(end):
        return await _lease_gone(runtime, task.id)
    # The one INFO line of a run that went to its end.
    fields = {"attempt": task.attempts, "status": status.value, "error": error}
    log.info("task_finished", task_id=str(task.id), **fields)
    return Outcome(status.value)


def claimer_of(runtime: WorkerRuntime) -> Claimer:
    """The runtime's claimer, made on first use (inside the worker's event loop)."""
    if runtime.claimer is None:

        async def claim(task_ids: list[uuid.UUID]) -> dict[uuid.UUID, Claim]:
            return await claim_batch(runtime, task_ids)

        runtime.claimer = Claimer(claim, runtime.settings.worker_claim_batch)
    return runtime.claimer


def keeper_of(runtime: WorkerRuntime) -> LeaseKeeper:
    """The runtime's lease keeper, made on first use (inside the worker's event loop)."""
    if runtime.keeper is None:
        runtime.keeper = LeaseKeeper(runtime.sessionmaker, runtime.settings)
    return runtime.keeper


def completer_of(runtime: WorkerRuntime) -> Completer:
    """The runtime's completer, made on first use (inside the worker's event loop)."""
    if runtime.completer is None:

        async def write_one(end: Completion) -> bool:
            return await _write(runtime, lambda session: _finish_one(session, end))

        async def announce(ended: list[Completion]) -> None:
            may_call_back = any(end.may_call_back for end in ended)
            ids = [(end.task_id, end.batch_id) for end in ended]
            await runtime.hints.finished(ids, may_call_back)

        runtime.completer = Completer(
            runtime.sessionmaker, write_one, runtime.settings.worker_completion_batch, announce
        )
    return runtime.completer


async def _finish_one(session: AsyncSession, end: Completion) -> bool:
    return end.task_id in await completions.finish_tasks(session, [end])


async def _write(runtime: WorkerRuntime, write: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `write`, one statement, as its own transaction, trying again briefly if the database
    blips; a longer outage raises, and the expiring lease hands the task to another run."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            async with runtime.sessionmaker() as session, single_statement(session):
                return await write(session)
        except Exception as exc:
            # A restarting database also fails with errors outside INFRASTRUCTURE_ERRORS
            # ("the database system is shutting down"): worth the same retry.
            if attempt == WRITE_ATTEMPTS or not outage.is_outage(exc):
                raise
            log.warning("task_write_failed", attempt=attempt, error=type(exc).__name__)
            await asyncio.sleep(WRITE_RETRY_S * attempt)
    raise AssertionError("unreachable")


async def _lease_gone(runtime: WorkerRuntime, task_id: uuid.UUID) -> Outcome:
    async with runtime.sessionmaker() as session:
        status = await tasks.get_task_status(session, task_id)
    if status == TaskStatus.CANCELLED.value:
        log.info("task_cancel_noticed", task_id=str(task_id))
        return Outcome.CANCELLED
    log.warning("task_lease_lost", task_id=str(task_id), status=status)
    return Outcome.LEASE_LOST
