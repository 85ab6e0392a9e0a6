"""The worker's verify+claim riding out a database blip instead of failing its message."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import outage
from shared.db.models import TaskStatus
from shared.embedded import free_port
from shared.settings import Settings
from tests.workers import (
    GatedScanner,
    close_runtime,
    committed_task,
    load,
    new_runtime,
    worker_settings,
)
from worker_service import lifecycle
from worker_service.lifecycle import Outcome, run_task


async def test_a_pooled_connection_the_server_dropped_is_retried_and_the_task_claimed(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    # One pooled connection, not tested before use: the claim's first statement meets the
    # dead connection, as after a database restart or a failover.
    tuned = worker_settings(settings, db_pool_size=1, db_max_overflow=0, db_pool_pre_ping=False)
    scanner = GatedScanner()
    runtime = new_runtime(tuned, scanner, owner="outage-worker")
    try:
        async with runtime.engine.connect() as connection:
            pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with sessionmaker() as session:
            stmt = text("SELECT pg_terminate_backend(:pid)")
            assert (await session.execute(stmt, {"pid": pid})).scalar_one()
        task_id = await committed_task(sessionmaker)

        assert await run_task(runtime, task_id) == Outcome.SUCCEEDED
    finally:
        await close_runtime(runtime)
    assert scanner.calls == ["example.com"]
    task = await load(sessionmaker, task_id)
    assert task.status == TaskStatus.SUCCEEDED
    assert task.attempts == 1


async def test_a_database_that_stays_down_fails_the_message_after_the_claim_retry_budget(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lifecycle, "CLAIM_RETRY_BASE_S", 0.01)
    monkeypatch.setattr(lifecycle, "CLAIM_RETRY_MAX_S", 0.05)
    task_id = await committed_task(sessionmaker)
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/scan_outbox"
    tuned = worker_settings(settings, database_url=SecretStr(unreachable), worker_claim_retry_s=0.5)
    attempts: list[int] = []
    real_once = lifecycle._verify_and_claim_once

    async def counted(*args: object) -> object:
        attempts.append(1)
        return await real_once(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(lifecycle, "_verify_and_claim_once", counted)
    scanner = GatedScanner()
    runtime = new_runtime(tuned, scanner, owner="outage-worker")
    try:
        with pytest.raises((OSError, DBAPIError)) as raised:
            await run_task(runtime, task_id)
    finally:
        await close_runtime(runtime)
    assert outage.is_outage(raised.value)
    # Tried again with backoff until the budget ran out (0.5 s at most 0.05 s apart).
    assert len(attempts) >= 5
    assert scanner.calls == []
    assert (await load(sessionmaker, task_id)).status == TaskStatus.PENDING
