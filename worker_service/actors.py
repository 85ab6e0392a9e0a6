"""Dramatiq actors, thin: decode the message, run the task (`lifecycle.run_task`: claim, scan,
finish). Started by `python -m worker_service` only (see `async_worker.AsyncWorkerOnly`)."""

from __future__ import annotations

import uuid

import dramatiq
import structlog

from shared import keys
from shared.logging import configure_logging, get_logger
from shared.settings import get_settings
from worker_service import async_worker, lifecycle
from worker_service.broker import install_broker
from worker_service.runtime import get_runtime

configure_logging(get_settings().log_level, get_settings().log_json, batch_lines=True)
install_broker()
log = get_logger(__name__)


# Retries belong to the outbox (a new row with backoff), never to Dramatiq; and Dramatiq's
# time limit sits above everything a run may take, so it never cuts a scan short on its own
# (the worker enforces it with asyncio.timeout: see worker_service.async_worker).
@dramatiq.actor(
    actor_name=keys.SCAN_ACTOR,
    queue_name=get_settings().queue_name,
    max_retries=0,
    time_limit=lifecycle.actor_time_limit_ms(get_settings()),
)
async def scan_domain(task_id: str, request_id: str | None = None) -> None:
    message = async_worker.current_message()
    message_id = message.message_id if message else None
    # Each run is a task of its own with its own copy of the context: what is bound here ends
    # with the run, with no unbinding (which costs as much again, per run).
    structlog.contextvars.bind_contextvars(
        task_id=task_id, message_id=message_id, request_id=request_id
    )
    try:
        parsed = uuid.UUID(task_id)
    except ValueError:
        log.error("message_rejected", reason="task_id is not a UUID")
        return
    await lifecycle.run_task(get_runtime(), parsed, request_id)
