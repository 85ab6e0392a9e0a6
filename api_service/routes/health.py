"""Probes: /livez (the process answers) and /readyz (the database answers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from api_service.deps import RedisDep

router = APIRouter(tags=["health"])


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready: the database does not answer"}})
async def readyz(request: Request, redis: RedisDep) -> JSONResponse:
    """Ready when the database answers; Redis is reported but only a safeguard."""
    engine: AsyncEngine = request.app.state.engine
    checks = {"database": "ok", "redis": "ok"}
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError):
        checks["database"] = "down"
    try:
        await redis.ping()
    except (RedisError, OSError):
        checks["redis"] = "down"
    ready = checks["database"] == "ok"
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", **checks}, 200 if ready else 503
    )
