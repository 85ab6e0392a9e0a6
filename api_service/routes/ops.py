"""Operator endpoints: the admin health summary and the Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service import responses
from api_service.deps import AdminUser, RedisDep, SettingsDep
from shared import health_report

router = APIRouter(prefix="/api/v1/ops", tags=["ops"])
metrics_router = APIRouter(tags=["ops"])


@router.get(
    "/health",
    responses={
        **responses.errors(401, 403),
        503: {
            "description": "Unhealthy: the same report, with its reasons",
            "content": {"application/json": {"schema": {"type": "object"}}},
            "headers": responses.RETRY_AFTER,
        },
    },
)
async def ops_health(
    _: AdminUser, request: Request, redis: RedisDep, settings: SettingsDep
) -> JSONResponse:
    """The facts `scanctl status` shows, as JSON; 503 with the reasons when unhealthy."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    report = await health_report.gather_health(sessionmaker, redis, settings)
    if report.healthy:
        return JSONResponse(report.to_json())
    # Health is gathered afresh on each call: asking again after a second may see it mended.
    return JSONResponse(report.to_json(), status_code=503, headers={"Retry-After": "1"})


@metrics_router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    """This process's metrics (the API runs one uvicorn process per pod: the default registry)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
