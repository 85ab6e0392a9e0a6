"""FastAPI dependencies: settings, session, Redis, what a use case dispatches with, and the
authenticated user.

All are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread
hop per dependency per request for what is only an attribute read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service.task_service import Dispatch
from api_service.waiting import FinishWaiters
from shared import wakeups
from shared.db import users
from shared.db.engine import single_statement
from shared.db.models import User
from shared.errors import Forbidden, InvalidInput, NotAuthenticated
from shared.settings import Settings
from shared.tokens import hash_token


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_redis(request: Request) -> aioredis.Redis:
    client: aioredis.Redis = request.app.state.redis
    return client


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        yield session


async def get_request_id(request: Request) -> str | None:
    request_id: str | None = request.scope.get("state", {}).get("request_id")
    return request_id


async def get_hints(request: Request) -> wakeups.Hints:
    hints: wakeups.Hints = request.app.state.hints
    return hints


async def get_waiters(request: Request) -> FinishWaiters:
    waiters: FinishWaiters = request.app.state.waiters
    return waiters


def checked_wait_s(wait_s: float, settings: Settings) -> float:
    """The `wait` query parameter, refused (422 naming it) above `SCAN_WAIT_MAX_S`."""
    if wait_s > settings.wait_max_s:
        raise InvalidInput(f"must be at most {settings.wait_max_s:g} seconds", field="wait")
    return wait_s


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
WaitersDep = Annotated[FinishWaiters, Depends(get_waiters)]
HintsDep = Annotated[wakeups.Hints, Depends(get_hints)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
RequestIdDep = Annotated[str | None, Depends(get_request_id)]


async def get_dispatch(
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    hints: HintsDep,
    request_id: RequestIdDep,
) -> Dispatch:
    return Dispatch(session, redis, settings, hints, request_id)


# The route's own session (the one the user was looked up with: dependencies are cached).
DispatchDep = Annotated[Dispatch, Depends(get_dispatch)]


# Declared in OpenAPI as the `bearerAuth` HTTP bearer scheme, so /docs can sign in; a missing
# or malformed header is refused below with the API's own 401 body.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="The API token `scanctl users create` printed.",
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


async def get_current_user(credentials: BearerCredentials, session: SessionDep) -> User:
    """The active user whose bearer token the request carries.

    Looked up in a short read of its own on the route's session, which then holds no
    connection and no transaction: each use case opens its own at its write.
    """
    token = credentials.credentials.strip() if credentials is not None else ""
    if not token:
        raise NotAuthenticated("a bearer token is required", field="Authorization")
    async with single_statement(session):
        user = await users.get_active_user_by_token_hash(session, hash_token(token))
    if user is None:
        raise NotAuthenticated("the token is invalid or revoked", field="Authorization")
    # Detached, as from a session of its own: a rollback of the route's work cannot expire it.
    session.expunge(user)
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin_user(user: CurrentUser) -> User:
    if not user.is_admin:
        raise Forbidden("this endpoint is for administrators")
    return user


AdminUser = Annotated[User, Depends(get_admin_user)]
