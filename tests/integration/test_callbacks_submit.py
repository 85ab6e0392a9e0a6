"""Completion callback URLs vetted at submit through the API: scheme, credentials, the
SSRF guard on IP literals and on what the host resolves to, and a secret first."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.settings import Settings
from tests.helpers import api_client, make_user


@pytest.fixture
def cb_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "callback_allow_http": True,
            "resolver_overrides": {"hooks.example.com": "127.0.0.1"},
        }
    )


async def new_secret(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.post("/api/v1/callbacks/secret", headers=headers)
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/x", "must be an https or http URL"),
        ("https://user:pw@hooks.example.com/x", "must not carry credentials"),
        ("https://10.0.0.1/x", "must not point at a private address"),
        ("https://169.254.169.254/latest", "must not point at a cloud metadata address"),
        ("https://localhost/x", "host"),
        ("https://intranet/x", "host"),
        ("not a url", "must be an https or http URL"),
    ],
)
async def test_a_callback_url_the_guard_refuses_is_422_naming_callback_url(
    cb_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    url: str,
    reason: str,
) -> None:
    strict = cb_settings.model_copy(update={"allow_private": False})
    _, token = await make_user(sessionmaker, "strict")
    headers = {"Authorization": f"Bearer {token}"}
    async with api_client(strict) as http:
        await new_secret(http, headers)
        task = await http.post(
            "/api/v1/tasks",
            json={"target_domain": "a.example.com", "callback_url": url},
            headers=headers,
        )
        batch = await http.post(
            "/api/v1/batches",
            json={"tasks": [{"target_domain": "a.example.com"}], "callback_url": url},
            headers=headers,
        )
    for refused in (task, batch):
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"] == "callback_url"
        assert reason in refused.json()["error"]["message"]


async def test_https_only_unless_allowed_and_a_secret_is_needed_first(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    _, token = await make_user(sessionmaker, "bob")
    headers = {"Authorization": f"Bearer {token}"}
    body = {"target_domain": "a.example.com", "callback_url": "https://hooks.example.com/x"}
    async with api_client(settings) as http:
        no_secret = await http.post("/api/v1/tasks", json=body, headers=headers)
        await new_secret(http, headers)
        plain = await http.post(
            "/api/v1/tasks",
            json={**body, "callback_url": "http://hooks.example.com/x"},
            headers=headers,
        )
        accepted = await http.post("/api/v1/tasks", json=body, headers=headers)

    assert (no_secret.status_code, no_secret.json()["error"]["field"]) == (422, "callback_url")
    assert "secret" in no_secret.json()["error"]["message"]
    assert (plain.status_code, plain.json()["error"]["message"]) == (422, "must be an https URL")
    assert accepted.status_code == 201
    assert accepted.json()["callback_url"] == "https://hooks.example.com/x"
    async with sessionmaker() as session:
        stored = await session.execute(text("SELECT callback_url FROM tasks"))
        assert stored.scalars().all() == ["https://hooks.example.com/x"]


async def test_a_host_resolving_only_to_private_addresses_is_refused_at_submit(
    cb_settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    strict = cb_settings.model_copy(
        update={"allow_private": False, "resolver_overrides": {"evil.example.com": "10.0.0.5"}}
    )
    _, token = await make_user(sessionmaker, "strict")
    headers = {"Authorization": f"Bearer {token}"}
    url = "https://hooks.evil.example.com/x"
    async with api_client(strict) as http:
        await new_secret(http, headers)
        task = await http.post(
            "/api/v1/tasks",
            json={"target_domain": "a.example.com", "callback_url": url},
            headers=headers,
        )
        batch = await http.post(
            "/api/v1/batches",
            json={"tasks": [{"target_domain": "a.example.com"}], "callback_url": url},
            headers=headers,
        )

    for refused in (task, batch):
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["field"] == "callback_url"
        assert error["message"] == "host hooks.evil.example.com 10.0.0.5 is private"
    async with sessionmaker() as session:
        assert (await session.execute(text("SELECT count(*) FROM tasks"))).scalar_one() == 0
