"""Fixtures the API tests share: the app in process, and a user's token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.settings import Settings
from tests.helpers import api_client, make_user


@pytest.fixture
async def client(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[httpx.AsyncClient]:
    """The API in process (after the tables were emptied: `sessionmaker` comes first)."""
    async with api_client(settings) as http:
        yield http


@pytest.fixture
async def token(sessionmaker: async_sessionmaker[AsyncSession]) -> str:
    """The token of a fresh user, alice."""
    _, token = await make_user(sessionmaker, "alice")
    return token
