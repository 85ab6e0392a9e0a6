"""The API app plus one bench-only route: the create that scan-outbox replaces.

`POST /bench/direct-tasks` takes the same token and body as `POST /api/v1/tasks`,
inserts the task row alone (one INSERT … RETURNING), commits, then sends the Dramatiq
message for `scan_domain` itself, a synchronous broker call moved off the event loop
as a typical asyncio service would. No outbox, no Redis safeguards: the minimal
baseline `create_throughput` holds the real route against, in the same process setup
(`uvicorn bench.direct_app:main --factory`).
"""

from __future__ import annotations

import asyncio
import uuid

from dramatiq.brokers.redis import RedisBroker
from fastapi import APIRouter, FastAPI, Request, Response, status
from sqlalchemy import insert

from api_service.app import create_app
from api_service.deps import CurrentUser, SessionDep, SettingsDep
from api_service.domains import normalise_domain
from api_service.schemas import TaskCreate, TaskOut
from shared import keys
from shared.db.engine import single_statement
from shared.db.models import Task
from shared.dramatiq_broker import build_message, create_broker
from shared.logging import configure_logging
from shared.settings import get_settings

DIRECT_PATH = "/bench/direct-tasks"
router = APIRouter()


@router.post(DIRECT_PATH, status_code=status.HTTP_201_CREATED, response_model=TaskOut)
async def create_direct(
    body: TaskCreate,
    request: Request,
    response: Response,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
) -> TaskOut:
    """Commit the task, then send its message: the commit/send race, kept for comparison."""
    values = {
        "id": uuid.uuid4(),
        "user_id": user.id,
        "target_domain": normalise_domain(body.target_domain),
        "config": body.config.model_dump(),
        "max_attempts": settings.task_max_attempts,
    }
    async with single_statement(session):
        task = (await session.execute(insert(Task).values(values).returning(Task))).scalar_one()
    broker: RedisBroker = request.app.state.bench_broker
    message = build_message(
        uuid.uuid4(), settings.queue_name, keys.SCAN_ACTOR, {"task_id": str(task.id)}
    )
    await asyncio.to_thread(broker.enqueue, message)
    response.headers["Location"] = f"/api/v1/tasks/{task.id}"
    return TaskOut.model_validate(task)


def main() -> FastAPI:
    """Uvicorn factory: the real app with the baseline route added."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    app = create_app(settings)
    app.state.bench_broker = create_broker(settings, middleware=[], socket_timeout_s=5)
    app.include_router(router)
    return app
