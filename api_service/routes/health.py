"""Probes, each judging only what restarting or removing this pod can change.

/livez: the process answers HTTP (its event loop runs); a restart fixes a wedged process.
/readyz: the app has started (its pools and listeners exist) and serves; the database and
Redis are reported, not judged: an outage of either is shared by every API pod, and failing
readiness on it would empty the Service at once, turning each request's documented JSON 503
into a connection error.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from api_service.deps import RedisDep

router = APIRouter(tags=["health"])
# The database check gives up well within the readiness probe's 2 s timeout: a database that
# does not answer (a blackholed host) must not make the probe itself time out.
DATABASE_CHECK_TIMEOUT_S = 1.0


async def _database_answers(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    return True


@router.get("/livez")
async def livez() -> dict[str, str]:
    """The process answers: its event loop runs."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, redis: RedisDep) -> JSONResponse:
    """Ready once the app has started (uvicorn serves nothing before); `database` and `redis`
    say whether each answers now, without changing the status: requests needing a server
    that is down answer 503 with the error body."""
    engine: AsyncEngine = request.app.state.engine
    checks = {"database": "ok", "redis": "ok"}
    try:
        await asyncio.wait_for(_database_answers(engine), DATABASE_CHECK_TIMEOUT_S)
    except (SQLAlchemyError, OSError, TimeoutError):
        checks["database"] = "down"
    try:
        await redis.ping()
    except (RedisError, OSError):
        checks["redis"] = "down"
    return JSONResponse({"status": "ready", **checks}, 200)
