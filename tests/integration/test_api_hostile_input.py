"""Hostile input to the create endpoint: every odd body or header is refused with a 4xx and the
JSON error body, and writes nothing; names that look alike are stored as what they are."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service.app import create_app
from shared.db.models import Task
from shared.settings import Settings
from tests.helpers import count_rows

CREATE = "/api/v1/tasks"


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def assert_refused(response: httpx.Response, status: int, field: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"]
    assert error["message"]
    if field is not None:
        assert error["field"] == field, error
    return error


async def test_a_body_over_the_cap_without_a_content_length_is_413(
    client: httpx.AsyncClient, token: str, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"target_domain": "example.com", "config": {"keywords": ["'
        for _ in range(100):
            yield b"a" * 1000
        yield b'"]}}'

    response = await client.post(CREATE, content=chunks(), headers=auth(token))

    assert "content-length" not in response.request.headers
    assert assert_refused(response, 413, "body")["code"] == "payload_too_large"
    assert await count_rows(sessionmaker) == (0, 0)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # Deeper than the JSON parser recurses: refused as malformed, not as a server error.
        (
            '{"target_domain": "example.com", "config": {"keywords": ' + nested(20_000) + "}}",
            "body",
        ),
        (
            '{"target_domain": "example.com", "config": {"keywords": ' + nested(40) + "}}",
            "config.keywords.0",
        ),
        ('{"target_domain": ' + nested(50) + "}", "target_domain"),
        (
            json.dumps({"target_domain": "example.com", "config": {"a": {"b": {"c": {}}}}}),
            "config.a",
        ),
        # Every rule at its longest: more than SCAN_MAX_CONFIG_BYTES of configuration.
        (
            json.dumps(
                {
                    "target_domain": "example.com",
                    "config": {"keywords": ["k" * 200] * 50, "regexes": ["r" * 200] * 50},
                }
            ),
            "config",
        ),
        (json.dumps({"target_domain": ".".join(["a" * 63] * 160)}), "target_domain"),
        (json.dumps({"target_domain": "a." * 5000 + "com"}), "target_domain"),
    ],
    ids=[
        "nesting-20000",
        "nesting-40",
        "nested-domain",
        "unknown-config",
        "huge-config",
        "10k-labels",
        "10k-dots",
    ],
)
async def test_deep_or_huge_input_is_422_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient,
    token: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    body: str,
    field: str,
) -> None:
    response = await client.post(CREATE, content=body.encode(), headers=auth(token))

    error = assert_refused(response, 422, None)
    assert error["field"].startswith(field), error
    assert error["code"] == "invalid_input"
    assert await count_rows(sessionmaker) == (0, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"target_domain": "\xff\xfe.example.com"}', "body"),
        (b'{"target_domain": "ex\xc3(ample.com"}', "body"),
        (b'{"target_domain": "\x00example.com"}', "body"),
        # Escaped, a lone surrogate parses, but is no text: PostgreSQL could not store it.
        (b'{"target_domain": "example.com", "config": {"keywords": ["\\ud800"]}}', "config"),
    ],
    ids=["bad-lead-bytes", "bad-continuation", "nul", "lone-surrogate"],
)
async def test_bytes_that_are_not_utf8_are_422_and_write_nothing(
    client: httpx.AsyncClient,
    token: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    body: bytes,
    field: str,
) -> None:
    response = await client.post(CREATE, content=body, headers=auth(token))

    assert assert_refused(response, 422, None)["field"].startswith(field)
    assert await count_rows(sessionmaker) == (0, 0)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        # Cyrillic letters but the last: looks like "paypal.com", is another name.
        ("\u0440\u0430\u0443\u0440\u0430l.com", "xn--l-7sba6dbr.com"),
        # One Cyrillic "a" among Latin letters.
        ("p\u0430ypal.com", "xn--pypal-4ve.com"),
        # Full-width letters and dot fold to their ASCII forms (UTS 46).
        ("\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d", "example.com"),
        ("ﬁ.example.COM.", "fi.example.com"),
    ],
)
async def test_look_alike_names_are_stored_in_their_ascii_form(
    client: httpx.AsyncClient,
    token: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    given: str,
    stored: str,
) -> None:
    response = await client.post(CREATE, json={"target_domain": given}, headers=auth(token))

    assert response.status_code == 201, response.text
    assert response.json()["target_domain"] == stored
    async with sessionmaker() as session:
        assert (await session.execute(select(Task.target_domain))).scalar_one() == stored


async def asgi_post(
    app: FastAPI, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """POST /api/v1/tasks straight through ASGI, headers as raw bytes: HTTP clients refuse
    to send a CR or LF inside a header value, but nothing stops a hostile proxy or peer."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": CREATE,
        "raw_path": CREATE.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], start["headers"], content


@pytest.mark.parametrize(
    "key",
    [b"abc\r\nX-Injected: 1", b"abc\nSet-Cookie: session=evil", b"abc\rdef", b"k\x00ey", b"k\x7f"],
)
async def test_control_characters_in_the_idempotency_key_are_refused_and_never_echoed(
    app: FastAPI, token: str, sessionmaker: async_sessionmaker[AsyncSession], key: bytes
) -> None:
    headers = [
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-type", b"application/json"),
        (b"idempotency-key", key),
        (b"x-request-id", b"req\r\nX-Injected: 1"),
    ]

    status, response_headers, content = await asgi_post(
        app, headers, b'{"target_domain": "example.com"}'
    )

    assert status == 422, content
    assert json.loads(content)["error"]["field"] == "Idempotency-Key"
    names = {name.lower() for name, _ in response_headers}
    assert not names & {b"x-injected", b"set-cookie"}
    assert all(b"\r" not in v and b"\n" not in v for _, v in response_headers)
    # The request id was not plain: the API made its own rather than echo it.
    request_id = dict(response_headers)[b"x-request-id"]
    assert request_id.isalnum()
    assert b"Injected" not in content
    assert b"evil" not in content
    assert await count_rows(sessionmaker) == (0, 0)
