"""The dashboard's Schedules page: every client's schedules with their next fire time and
their latest run, for administrators only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.firing import fire_due
from shared import safeguards
from shared.settings import Settings
from tests.dashboard import open_client, sign_in
from tests.helpers import make_user
from tests.integration.schedule_support import add_schedule

Sessions = async_sessionmaker[AsyncSession]
KEY = "k" * 40


@pytest.fixture
async def http(settings: Settings, engine: object) -> AsyncIterator[httpx.AsyncClient]:
    ui_settings = settings.model_copy(update={"ui_secret_key": SecretStr(KEY)})
    async for client in open_client(ui_settings, "http://testserver"):
        yield client


async def test_the_page_lists_next_fire_times_soonest_first_and_each_latest_run(
    http: httpx.AsyncClient, sessionmaker: Sessions, settings: Settings
) -> None:
    _, token = await make_user(sessionmaker, "root", admin=True)
    owner, _ = await make_user(sessionmaker, "watcher")
    now = datetime.now(UTC).replace(microsecond=0)
    later = await add_schedule(
        sessionmaker,
        owner.id,
        cron="0 3 * * *",
        timezone="Europe/Paris",
        anchor_at=now,
        next_fire_at=now + timedelta(hours=5),
        name="nightly",
    )
    soon = await add_schedule(
        sessionmaker, owner.id, interval_s=60, anchor_at=now, next_fire_at=now, name="minutely"
    )
    redis = safeguards.create_redis(settings)
    try:
        assert (await fire_due(sessionmaker, redis, settings, now=now)).fired == 1
    finally:
        await redis.aclose()
    assert (await sign_in(http, token)).status_code == 303

    response = await http.get("/ui/schedules")

    assert response.status_code == 200
    html = response.text
    assert html.index(str(soon)[:8]) < html.index(str(later)[:8])
    assert "minutely" in html
    assert "nightly" in html
    assert "<code>0 3 * * *</code> Europe/Paris" in html
    assert "watcher" in html
    assert "batch <code" in html  # the minutely schedule's run


async def test_a_client_who_is_not_an_administrator_is_refused(
    http: httpx.AsyncClient, sessionmaker: Sessions
) -> None:
    _, token = await make_user(sessionmaker, "someone")
    await sign_in(http, token)
    response = await http.get("/ui/schedules", follow_redirects=False)
    assert response.status_code in (303, 403)
