"""/api/v1/schedules against a real PostgreSQL and Redis: create with next fire times, every
bad field named, the limits, pause/resume, delete, and the runs a relay made."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.firing import fire_due
from shared import safeguards
from shared.settings import Settings
from tests.helpers import api_client, make_user


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hourly(**extra: Any) -> dict[str, Any]:
    return {"cron": "0 * * * *", "timezone": "Europe/Paris", "domains": ["Example.COM"], **extra}


async def test_a_schedule_is_created_with_its_next_fire_time_and_listed_paused_and_resumed(
    client: httpx.AsyncClient, token: str
) -> None:
    before = datetime.now(UTC)
    response = await client.post(
        "/api/v1/schedules", json=hourly(name="hourly"), headers=auth(token)
    )

    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"/api/v1/schedules/{created['id']}"
    assert created["domains"] == ["example.com"]
    assert (created["paused"], created["missed"], created["callback"]) == (
        False,
        "run_once",
        "finished",
    )
    next_fire = datetime.fromisoformat(created["next_fire_at"])
    assert before < next_fire <= before + timedelta(hours=1)
    assert (next_fire.minute, next_fire.second) == (0, 0)

    listed = (await client.get("/api/v1/schedules", headers=auth(token))).json()["items"]
    assert [item["id"] for item in listed] == [created["id"]]

    paused = await client.post(f"/api/v1/schedules/{created['id']}/pause", headers=auth(token))
    assert paused.status_code == 200
    assert (paused.json()["paused"], paused.json()["next_fire_at"]) == (True, None)
    again = await client.post(f"/api/v1/schedules/{created['id']}/pause", headers=auth(token))
    assert again.json()["paused"] is True
    resumed = await client.post(f"/api/v1/schedules/{created['id']}/resume", headers=auth(token))
    assert resumed.json()["paused"] is False
    assert resumed.json()["next_fire_at"] == created["next_fire_at"]

    deleted = await client.delete(f"/api/v1/schedules/{created['id']}", headers=auth(token))
    assert deleted.status_code == 204
    gone = await client.get(f"/api/v1/schedules/{created['id']}", headers=auth(token))
    assert gone.status_code == 404


ONE = ["example.com"]
NO_SUCH_BATCH = "8d1b3f3e-7b0e-4d8e-9a59-5c8b1f0f4a11"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (hourly(cron="every day"), "cron"),
        (hourly(cron="61 * * * *"), "cron"),
        (hourly(timezone="Mars/Olympus"), "timezone"),
        ({"interval_s": 10, "domains": ONE}, "interval_s"),
        ({"interval_s": 3600, "cron": "0 * * * *", "domains": ONE}, "cron"),
        ({"interval_s": 3600}, "domains"),
        ({"interval_s": 3600, "domains": ONE, "batch_template": NO_SUCH_BATCH}, "domains"),
        ({"interval_s": 3600, "domains": ["example.com", "not a domain"]}, "domains"),
        ({"interval_s": 3600, "domains": ONE, "callback": "changes"}, "callback"),
        ({"interval_s": 3600, "batch_template": NO_SUCH_BATCH}, "batch_template"),
    ],
)
async def test_each_bad_field_is_named(
    client: httpx.AsyncClient, token: str, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/schedules", json=body, headers=auth(token))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


async def test_a_cron_expression_firing_more_often_than_the_minimum_is_refused(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await make_user(sessionmaker)
    hourly_minimum = settings.model_copy(update={"schedule_min_interval_s": 3600})
    async with api_client(hourly_minimum) as client:
        body = hourly(cron="*/30 * * * *")
        response = await client.post("/api/v1/schedules", json=body, headers=auth(token))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "cron"
    assert "1800 s apart" in response.json()["error"]["message"]


async def test_each_bad_domain_is_named_by_index(client: httpx.AsyncClient, token: str) -> None:
    body = {"interval_s": 3600, "domains": ["example.com", "not a domain", "x.example.org"]}
    response = await client.post("/api/v1/schedules", json=body, headers=auth(token))
    (entry,) = response.json()["error"]["errors"]
    assert (entry["index"], entry["field"]) == (1, "domains")


async def test_limits_schedules_per_client_and_domains_per_schedule(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await make_user(sessionmaker)
    tight = settings.model_copy(update={"schedule_max_per_client": 2, "schedule_max_domains": 3})
    async with api_client(tight) as client:
        too_many = {"interval_s": 3600, "domains": [f"d{n}.example.com" for n in range(4)]}
        response = await client.post("/api/v1/schedules", json=too_many, headers=auth(token))
        assert (response.status_code, response.json()["error"]["field"]) == (422, "domains")
        for _ in range(2):
            ok = await client.post("/api/v1/schedules", json=hourly(), headers=auth(token))
            assert ok.status_code == 201
        third = await client.post("/api/v1/schedules", json=hourly(), headers=auth(token))
        assert (third.status_code, third.json()["error"]["field"]) == (409, "schedules")


async def test_a_batch_template_copies_its_domains_and_config_and_runs_are_listed(
    client: httpx.AsyncClient,
    token: str,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    batch = await client.post(
        "/api/v1/batches",
        json={
            "tasks": [{"target_domain": "a.example.com"}, {"target_domain": "b.example.com"}],
            "config": {"keywords": ["login"]},
        },
        headers=auth(token),
    )
    body = {"interval_s": 3600, "batch_template": batch.json()["id"]}
    created = (await client.post("/api/v1/schedules", json=body, headers=auth(token))).json()
    assert created["domains"] == ["a.example.com", "b.example.com"]
    assert created["config"] == {"keywords": ["login"], "regexes": []}

    redis = safeguards.create_redis(settings)
    try:
        fire_at = datetime.fromisoformat(created["next_fire_at"])
        counts = await fire_due(sessionmaker, redis, settings, now=fire_at)
    finally:
        await redis.aclose()
    assert counts.fired == 1
    runs = (await client.get(f"/api/v1/schedules/{created['id']}/runs", headers=auth(token))).json()
    (run,) = runs["items"]
    assert datetime.fromisoformat(run["tick_at"]) == fire_at
    assert run["changes"] is None
    run_batch = await client.get(f"/api/v1/batches/{run['batch_id']}", headers=auth(token))
    assert run_batch.json()["task_count"] == 2
    one = await client.get(
        f"/api/v1/schedules/{created['id']}/runs/{run['id']}", headers=auth(token)
    )
    assert one.json()["batch_id"] == run["batch_id"]
    shown = (await client.get(f"/api/v1/schedules/{created['id']}", headers=auth(token))).json()
    assert datetime.fromisoformat(shown["last_fired_at"]) == fire_at


async def test_another_clients_schedule_is_not_found(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    created = (await client.post("/api/v1/schedules", json=hourly(), headers=auth(token))).json()
    _, other = await make_user(sessionmaker, "mallory")
    for method, path in (
        ("GET", ""),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("GET", "/runs"),
        ("DELETE", ""),
    ):
        response = await client.request(
            method, f"/api/v1/schedules/{created['id']}{path}", headers=auth(other)
        )
        assert response.status_code == 404, (method, path)
    still = await client.get(f"/api/v1/schedules/{created['id']}", headers=auth(token))
    assert still.json()["paused"] is False
