"""The API's wake-up hints: sent after each commit that gives a relay or a waiter work, and
none for a write that changed nothing."""

from __future__ import annotations

import redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import wakeups
from shared.settings import Settings
from tests.helpers import api_client, make_user, published


async def test_a_create_hints_the_relays_and_a_cancel_hints_the_waiters(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis_client: redis.Redis,
) -> None:
    _, token = await make_user(sessionmaker)
    headers = {"Authorization": f"Bearer {token}"}
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(wakeups.OUTBOX, wakeups.FINISHED, wakeups.CALLBACKS)
    try:
        async with api_client(settings) as http:
            body = {"target_domain": "hint.example.com"}
            created = await http.post("/api/v1/tasks", json=body, headers=headers)
            after_create = await published(pubsub)
            task_id = created.json()["id"]
            cancelled = await http.post(f"/api/v1/tasks/{task_id}/cancel", headers=headers)
            after_cancel = await published(pubsub)
            refused = await http.post(f"/api/v1/tasks/{task_id}/cancel", headers=headers)
            after_refusal = await published(pubsub)
    finally:
        pubsub.close()

    assert (created.status_code, cancelled.status_code, refused.status_code) == (201, 200, 409)
    assert after_create == [(wakeups.OUTBOX, "")]
    # No callback URL and no batch: no delivery can have been written, no callbacks hint.
    assert after_cancel == [(wakeups.FINISHED, f"{task_id},")]
    assert after_refusal == []
