"""The FastAPI application: `create_app()` builds it, the lifespan owns its connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api_service import waiting
from api_service.exception_handlers import install_error_handlers
from api_service.middleware import BodySizeLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from api_service.routes import (
    batches,
    callbacks,
    deliveries,
    health,
    ops,
    schedules,
    tasks,
)
from api_service.ui import install_ui
from shared import redis_clients, safeguards, wakeups
from shared.db.engine import create_engine, create_sessionmaker
from shared.logging import configure_logging
from shared.settings import Settings, get_settings


@asynccontextmanager
async def _listening(waiters: waiting.FinishWaiters) -> AsyncIterator[None]:
    """The waiters' hint subscription, running for the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(waiters.run(stop), name="finish-waiters")
    try:
        yield
    finally:
        stop.set()
        await task


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; settings default to the environment's."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        app.state.redis = safeguards.create_redis(settings)
        app.state.hints = wakeups.Hints(
            wakeups.create_client(settings) if settings.wakeup_hints else None
        )
        app.state.waiters = waiting.FinishWaiters(
            settings if settings.wakeup_hints else None,
            settings.wait_max_waiters,
            waiting.RECONNECT_MAX_S,
            read_slots=settings.db_pool_size,
            max_client_waiters=settings.wait_max_waiters_per_client,
            poll_interval_s=settings.wait_poll_interval_s,
            find_ended=waiting.ended_in(app.state.sessionmaker),
        )
        try:
            async with _listening(app.state.waiters):
                yield
        finally:
            await app.state.hints.aclose()
            await redis_clients.aclose(app.state.redis)
            await engine.dispose()

    app = FastAPIOffline(
        title="scan-outbox",
        version=version("scan-outbox"),
        lifespan=lifespan,
        # The token stays filled in across reloads of /docs.
        swagger_ui_parameters={"persistAuthorization": True},
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(tasks.router)
    app.include_router(batches.router)
    app.include_router(schedules.router)
    app.include_router(callbacks.router)
    app.include_router(deliveries.router)
    app.include_router(deliveries.ops_router)
    app.include_router(ops.router)
    app.include_router(ops.metrics_router)
    install_ui(app, settings)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        by_path={batches.router.prefix: settings.batch_max_body_bytes},
    )
    app.add_middleware(RequestIdMiddleware)
    # Outermost, so refused bodies and errors are counted too.
    app.add_middleware(MetricsMiddleware)
    return app


def main() -> FastAPI:
    """Uvicorn factory entry point (`uvicorn api_service.app:main --factory`)."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings)
