"""`python -m bench.task_cost [TASKS]`: the worker's CPU per task, step by step.

Starts its own embedded PostgreSQL and Redis, then runs each step of a no-op task's path
TASKS times (2,000 by default) in this one process and prints the process CPU time each took
per task, in microseconds: Dramatiq's fetch and ack through Redis, the claim alone and in
batches, the scan under its lease (a no-op scanner), the final write alone and in batches, and
a log line at INFO and below the level. CPU time, not wall time: other load on the machine slows the
steps but does not bill them. PostgreSQL's and Redis's own CPU are not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import dramatiq
import structlog
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import text

from bench import stub_scanner
from bench.common import fill_tasks
from shared import safeguards
from shared.db import claims, completions, migrate
from shared.db.engine import create_engine, create_sessionmaker, single_statement
from shared.db.models import TaskStatus
from shared.embedded import embedded_servers
from shared.logging import configure_logging, get_logger
from shared.settings import Settings
from worker_service import lifecycle
from worker_service.runtime import WorkerRuntime

TASKS = 2000
BATCH = 32


def _cpu_us_per(count: int, started: float) -> float:
    return round((time.process_time() - started) * 1e6 / count, 1)


async def _timed(count: int, step: Callable[[int], Awaitable[Any]]) -> float:
    started = time.process_time()
    for index in range(count):
        await step(index)
    return _cpu_us_per(count, started)


def _dramatiq_us(settings: Settings, count: int) -> dict[str, float]:
    broker = RedisBroker(url=settings.effective_broker_url)  # type: ignore[no-untyped-call]
    broker.flush_all()

    @dramatiq.actor(broker=broker, queue_name="cost", actor_name="noop")
    def noop() -> None: ...

    started = time.process_time()
    for _ in range(count):
        noop.send()
    enqueue = _cpu_us_per(count, started)
    consumer = broker.consume("cost", prefetch=64, timeout=100)
    started = time.process_time()
    fetched = 0
    for message in consumer:
        if message is None:
            continue
        consumer.ack(message)
        fetched += 1
        if fetched == count:
            break
    fetch_ack = _cpu_us_per(count, started)
    consumer.close()
    broker.close()
    return {
        "dramatiq enqueue (the relay's side, for scale)": enqueue,
        "dramatiq fetch + ack": fetch_ack,
    }


def _logging_us(count: int) -> dict[str, float]:
    log = get_logger("bench.task_cost")
    figures: dict[str, float] = {}
    with (
        structlog.contextvars.bound_contextvars(task_id=str(uuid.uuid4()), message_id="m"),
        open(os.devnull, "w") as sink,
        contextlib.redirect_stderr(sink),
    ):
        started = time.process_time()
        for _ in range(count):
            log.info("task_finished", task_id="t", attempt=1, status="succeeded", error=None)
        figures["log line at INFO (JSON)"] = _cpu_us_per(count, started)
        started = time.process_time()
        for _ in range(count):
            log.debug("task_started", task_id="t", attempt=1)
        figures["log call below the level (filtering logger)"] = _cpu_us_per(count, started)
        # What a DEBUG call cost with structlog's stdlib BoundLogger: every processor ran,
        # then the stdlib dropped the record.
        config = structlog.get_config()
        structlog.configure(
            wrapper_class=structlog.stdlib.BoundLogger,
            logger_factory=structlog.stdlib.LoggerFactory(),
        )
        stdlib_log = structlog.get_logger("bench.task_cost.stdlib")
        started = time.process_time()
        for _ in range(count):
            stdlib_log.debug("task_started", task_id="t", attempt=1)
        figures["log call below the level (stdlib BoundLogger)"] = _cpu_us_per(count, started)
        structlog.configure(**config)
    return figures


async def _database_us(settings: Settings, count: int) -> dict[str, float]:
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    runtime = WorkerRuntime(
        settings.model_copy(update={"redis_safeguards": False}),
        engine,
        sessionmaker,
        stub_scanner.scan,
        safeguards.create_redis(settings),
        owner="cost",
    )
    async with sessionmaker() as session, session.begin():
        await session.execute(text("INSERT INTO users (name, token_hash) VALUES ('c', 'c')"))
        await fill_tasks(session, 2 * count, settings.queue_name)
    async with sessionmaker() as session:
        task_ids = list((await session.execute(text("SELECT id FROM tasks ORDER BY id"))).scalars())
    held: list[tuple[claims.ClaimedTask, uuid.UUID]] = []

    async def claim(index: int) -> None:
        claimed = await lifecycle._verify_and_claim_once(runtime, task_ids[index], None)
        assert not isinstance(claimed, lifecycle.Outcome)
        held.append(claimed)

    keeper = lifecycle.keeper_of(runtime)

    async def scan(index: int) -> None:
        task, token = held[index]
        lease = keeper.hold(task.id, token)
        try:
            async with lease.fence():
                await lifecycle._bounded_scan(runtime, task)
        finally:
            keeper.release(lease)

    async def finish_one(index: int) -> None:
        task, token = held[index]
        end = completions.Completion(task.id, token, TaskStatus.SUCCEEDED, {"ok": True}, None)
        assert await lifecycle._write(runtime, lambda session: lifecycle._finish_one(session, end))

    async def finish_batch(index: int) -> None:
        ends = [
            completions.Completion(task.id, token, TaskStatus.SUCCEEDED, {"ok": True}, None)
            for task, token in held[count + index * BATCH : count + (index + 1) * BATCH]
        ]
        async with sessionmaker() as session, single_statement(session):
            assert len(await completions.finish_tasks(session, ends)) == len(ends)

    claimer = lifecycle.claimer_of(runtime)

    async def claim_batch(index: int) -> None:
        ids = task_ids[count + index * BATCH : count + (index + 1) * BATCH]
        answers = await asyncio.gather(*(claimer.claim(task_id) for task_id in ids))
        held.extend(answer for answer in answers if answer is not None)
        assert len(held) == count + (index + 1) * BATCH

    figures = {
        "claim (existence look, target lock, polite claim, commit)": await _timed(count, claim),
        "no-op scan under its lease": await _timed(count, scan),
        "final write, one per statement": await _timed(count, finish_one),
    }
    # The second half of the tasks, claimed and then ended in batches.
    batches = count // BATCH
    figures[f"claim, batches of {BATCH} (per task)"] = round(
        await _timed(batches, claim_batch) / BATCH, 1
    )
    figures[f"final write, batches of {BATCH} (per task)"] = round(
        await _timed(batches, finish_batch) / BATCH, 1
    )
    await runtime.redis.aclose()
    await engine.dispose()
    return figures


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else TASKS
    # The worker's logging, at its default level, written nowhere.
    configure_logging("INFO", json=True)
    sink = open(os.devnull, "w")  # noqa: SIM115 (open for the whole run)
    logging.getLogger().handlers[0].setStream(sink)  # type: ignore[attr-defined]
    with (
        tempfile.TemporaryDirectory(prefix="scan-outbox-cost-") as tmp,
        embedded_servers(Path(tmp) / "servers", delete=True) as urls,
    ):
        migrate.upgrade(urls.database_url)
        settings = Settings(
            database_url=urls.database_url,  # type: ignore[arg-type]
            redis_url=urls.redis_url,  # type: ignore[arg-type]
            _env_file=None,  # type: ignore[call-arg]
        )
        figures = {
            **_dramatiq_us(settings, count),
            **asyncio.run(_database_us(settings, count)),
            **_logging_us(count * 10),
        }
    report = {"tasks": count, "cpu_us_per_task": figures, "load_1m": os.getloadavg()[0]}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
