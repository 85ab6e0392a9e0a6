"""Dramatiq actors, thin: decode the message, run the task (`dramatiq worker_service.actors`)."""

from __future__ import annotations

import uuid

import dramatiq
import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import CurrentMessage

from shared import keys
from shared.logging import configure_logging, get_logger
from shared.settings import get_settings
from worker_service import lifecycle
from worker_service.broker import install_broker
from worker_service.runtime import get_runtime

configure_logging(get_settings().log_level, get_settings().log_json)
install_broker()
log = get_logger(__name__)


# Retries belong to the outbox (a new row with backoff), never to Dramatiq; and Dramatiq's
# time limit sits above everything a run may take, so it never kills a scan on its own.
@dramatiq.actor(
    actor_name=keys.SCAN_ACTOR,
    queue_name=get_settings().queue_name,
    max_retries=0,
    time_limit=lifecycle.actor_time_limit_ms(get_settings()),
)
def scan_domain(task_id: str, request_id: str | None = None) -> None:
    # A plain function on the worker thread, where the current message is known;
    # the task itself runs on the process's event loop.
    message = CurrentMessage.get_current_message()
    message_id = message.message_id if message else None
    with structlog.contextvars.bound_contextvars(
        task_id=task_id, message_id=message_id, request_id=request_id
    ):
        try:
            parsed = uuid.UUID(task_id)
        except ValueError:
            log.error("message_rejected", reason="task_id is not a UUID")
            return
        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            raise RuntimeError("the AsyncIO middleware is not installed")
        loop_thread.run_coroutine(_run(parsed, task_id, message_id, request_id))


async def _run(
    task_id: uuid.UUID, raw_id: str, message_id: str | None, request_id: str | None
) -> None:
    with structlog.contextvars.bound_contextvars(
        task_id=raw_id, message_id=message_id, request_id=request_id
    ):
        await lifecycle.run_task(get_runtime(), task_id, request_id)
