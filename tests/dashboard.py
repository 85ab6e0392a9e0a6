"""Helpers for the dashboard's tests: signing in over HTTP and reading forms back."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api_service.app import create_app
from shared.db import tasks
from shared.messages import scan_entry
from shared.settings import Settings

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')

# A report as the worker writes it, for pages to render.
SAMPLE_REPORT: dict[str, Any] = {
    "domain": "shop.example.com",
    "dns": {
        "a": ["127.0.0.1"],
        "aaaa": [],
        "cname": [],
        "mx": [{"preference": 10, "exchange": "mail.example.com"}],
        "txt": ["v=spf1 -all"],
        "error": None,
    },
    "http": {
        "url": "http://shop.example.com/",
        "status": 200,
        "title": "Welcome to the shop",
        "elapsed_ms": 12,
        "body_bytes": 512,
        "truncated": False,
        "redirects": 0,
        "chain": [{"url": "http://shop.example.com/", "status": 200, "elapsed_ms": 12}],
        "security_headers": {"present": {"x-frame-options": "DENY"}, "missing": ["csp"]},
        "tls": None,
    },
    "findings": [{"rule": "keyword", "pattern": "acme", "count": 2, "excerpt": "the acme shop"}],
    "rules_applied_to": "http://shop.example.com/",
    "elapsed_ms": 40,
}


def csrf_token_in(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no csrf_token field on the page"
    return found.group(1)


async def sign_in(http: httpx.AsyncClient, token: str, next_path: str = "/ui") -> httpx.Response:
    """Load the sign-in form and post `token` with the form's own CSRF token."""
    form = await http.get("/ui/login")
    assert form.status_code == 200, form.text
    data = {"token": token, "csrf_token": csrf_token_in(form.text), "next": next_path}
    return await http.post("/ui/login", data=data)


async def page_csrf(http: httpx.AsyncClient, path: str = "/ui") -> str:
    """The session's CSRF token, as a signed-in page carries it."""
    response = await http.get(path)
    assert response.status_code == 200, response.text
    return csrf_token_in(response.text)


async def open_client(settings: Settings, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the API app `settings` configure, its lifespan running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            yield http


async def make_task(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: int, domain: str
) -> uuid.UUID:
    """A pending task with its outbox row, as the create path writes them."""
    task_id = uuid.uuid4()
    new = tasks.NewTask(user_id, domain, {"keywords": ["acme"]}, 3)
    async with sessionmaker() as session, session.begin():
        await tasks.insert_task_with_message(session, task_id, new, scan_entry(task_id, "scans"))
    return task_id


async def execute(sessionmaker: async_sessionmaker[AsyncSession], sql: str, **params: Any) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(text(sql), params)
