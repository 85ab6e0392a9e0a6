"""The small helpers routes share: a create's header fields, a page's size, the pass-through
of the HTTP-only middlewares, the create holding a key, and the page models' schemas."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import Response
from starlette.types import Message, Receive, Scope, Send

from api_service import idempotency, paging, responses
from api_service.middleware import HttpMiddleware
from api_service.schemas import DeliveryPage, TaskPage
from shared.create_rate import Quota
from shared.errors import IdempotencyKeyInFlight
from shared.settings import Settings

QUOTA = Quota(burst=60, fill_s=6, remaining=59, reset_s=1)


def test_a_create_answers_with_its_location_and_rate_limit_fields() -> None:
    response = Response()
    responses.answer_create(response, "/api/v1/tasks/1", QUOTA, replayed=False)

    assert response.headers["Location"] == "/api/v1/tasks/1"
    assert response.headers["RateLimit"] == QUOTA.headers()["RateLimit"]
    assert response.headers["RateLimit-Policy"] == QUOTA.headers()["RateLimit-Policy"]
    assert idempotency.REPLAYED_HEADER not in response.headers


def test_a_replayed_create_says_so_and_no_limit_sends_no_rate_limit_fields() -> None:
    response = Response()
    responses.answer_create(response, "/api/v1/batches/2", None, replayed=True)

    assert response.headers[idempotency.REPLAYED_HEADER] == "true"
    assert "RateLimit" not in response.headers


def test_a_create_documents_every_header_it_sets() -> None:
    documented = responses.idempotent_create("too many")

    assert set(documented[201]["headers"]) == {
        "RateLimit",
        "RateLimit-Policy",
        idempotency.REPLAYED_HEADER,
    }
    assert documented[429]["description"] == "too many"


@pytest.mark.parametrize(("asked", "given"), [(1, 1), (100, 100), (1000, 250)])
def test_a_page_holds_what_was_asked_up_to_the_configured_maximum(asked: int, given: int) -> None:
    settings = Settings.model_construct(page_size_max=250)
    assert paging.page_size(asked, settings) == given


class Marking(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["handled"] = True
        await self.app(scope, receive, send)


async def test_only_http_requests_reach_a_middlewares_handle() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    middleware = Marking(app)
    await middleware({"type": "lifespan"}, receive, send)
    await middleware({"type": "http"}, receive, send)

    assert [scope.get("handled") for scope in seen] == [None, True]


async def test_an_insert_turned_away_without_a_key_is_in_flight_and_reads_nothing() -> None:
    async def read(*args: Any) -> object:
        raise AssertionError("nothing to look up without a key")

    with pytest.raises(IdempotencyKeyInFlight):
        await idempotency.turned_away_by(None, read, 1, None)  # type: ignore[arg-type]


def test_each_page_model_keeps_its_own_name_and_field_order() -> None:
    for page, item in ((TaskPage, "TaskOut"), (DeliveryPage, "DeliveryOut")):
        schema = page.model_json_schema()
        assert schema["title"] == page.__name__
        assert list(schema["properties"]) == ["items", "next_cursor"]
        assert schema["properties"]["items"]["items"] == {"$ref": f"#/$defs/{item}"}
        assert schema["required"] == ["items", "next_cursor"]
    assert TaskPage(items=[], next_cursor=None).model_dump() == {"items": [], "next_cursor": None}
