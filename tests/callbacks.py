"""What the callback tests share: settings for a local receiver, and small steps."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client import REGISTRY
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service.deliverer import Deliverer
from shared.db.models import Delivery
from shared.settings import Settings


def callback_settings(settings: Settings) -> Settings:
    """Callbacks over http to hooks.example.com, which is 127.0.0.1; three tries."""
    return settings.model_copy(
        update={
            "allow_private": True,
            "callback_allow_http": True,
            "resolver_overrides": {"hooks.example.com": "127.0.0.1"},
            "callback_max_attempts": 3,
            "callback_timeout_s": 5.0,
        }
    )


async def new_secret(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> str:
    response = await client.post("/api/v1/callbacks/secret", json=body or None, headers=headers)
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


async def end_tasks(
    sessionmaker: async_sessionmaker[AsyncSession], status: str = "succeeded", where: str = "true"
) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(
            text(f"UPDATE tasks SET status = :status, finished_at = now() WHERE {where}"),
            {"status": status},
        )


async def deliveries(sessionmaker: async_sessionmaker[AsyncSession]) -> list[Delivery]:
    async with sessionmaker() as session:
        return list((await session.execute(select(Delivery).order_by(Delivery.id))).scalars())


async def make_due(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """As if every backoff and lease had run out."""
    async with sessionmaker() as session, session.begin():
        await session.execute(text("UPDATE deliveries SET available_at = now()"))


def failures(status: str) -> float:
    labels = {"status": status}
    return REGISTRY.get_sample_value("scan_outbox_callback_failures_total", labels) or 0.0


async def submit(client: httpx.AsyncClient, headers: dict[str, str], url: str) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/tasks",
        json={"target_domain": "cb.example.com", "callback_url": url},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


async def deliver_batch(deliverer: Deliverer) -> int:
    """What a turn of the deliverer's loop does with every slot free: lease due deliveries,
    POST each and record its outcome; the number leased."""
    async with deliverer.http_client() as client:
        posts = await deliverer.start_due(client, deliverer.settings.callback_batch_size)
        await asyncio.gather(*posts)
    return len(posts)
