"""The OpenAPI schema clients and Swagger UI read: a bearer scheme every API route requires,
and every error each route can answer documented with the one error body."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api_service.app import create_app
from shared.settings import Settings

ERROR_REF = "#/components/schemas/ErrorResponse"


@pytest.fixture(scope="module")
def app() -> FastAPI:
    # Nothing connects before the lifespan starts: the schema needs no servers.
    return create_app(
        Settings(
            database_url="postgresql+asyncpg://scan@127.0.0.1:1/scan",  # type: ignore[arg-type]
            redis_url="redis://127.0.0.1:1/0",  # type: ignore[arg-type]
        )
    )


def api_operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in schema["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in operations.items()
    ]


def test_the_schema_declares_an_http_bearer_scheme_every_api_route_requires(app: FastAPI) -> None:
    schema = app.openapi()

    assert schema["components"]["securitySchemes"]["bearerAuth"]["type"] == "http"
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    operations = api_operations(schema)
    assert len(operations) >= 10
    for method, path, operation in operations:
        assert operation.get("security") == [{"bearerAuth": []}], (method, path)


def test_every_api_route_documents_its_errors_with_the_error_body(app: FastAPI) -> None:
    for method, path, operation in api_operations(app.openapi()):
        responses = operation["responses"]
        assert {"401", "503"} <= responses.keys(), (method, path)
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                body = response["content"]["application/json"]["schema"]
                # The one exception: an unhealthy report is the health report itself.
                if (path, code) != ("/api/v1/ops/health", "503"):
                    assert body == {"$ref": ERROR_REF}, (method, path, code)
                assert response["description"], (method, path, code)
            if code in ("429", "503"):
                assert "Retry-After" in response["headers"], (method, path, code)


def test_the_create_routes_document_the_ratelimit_fields_and_idempotency(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    for path in ("/api/v1/tasks", "/api/v1/batches"):
        create = paths[path]["post"]
        assert {"RateLimit", "RateLimit-Policy", "Idempotent-Replayed"} <= set(
            create["responses"]["201"]["headers"]
        )
        assert {"RateLimit", "RateLimit-Policy", "Retry-After"} <= set(
            create["responses"]["429"]["headers"]
        )
        headers = [p["name"] for p in create["parameters"] if p["in"] == "header"]
        assert headers == ["Idempotency-Key"]


async def test_swagger_ui_is_served_by_the_api_itself(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        page = await http.get("/docs")
        script = await http.get("/static-offline-docs/swagger-ui-bundle.js")

    assert page.status_code == 200
    assert "/static-offline-docs/swagger-ui-bundle.js" in page.text
    assert "cdn." not in page.text
    assert script.status_code == 200
    assert len(script.content) > 100_000


def test_every_route_that_takes_a_body_documents_413(app: FastAPI) -> None:
    # The body-size middleware answers 413 before any route runs: a route taking a body
    # must say so, or a client reading the schema meets a status it was never told of.
    for method, path, operation in api_operations(app.openapi()):
        if "requestBody" in operation:
            assert "413" in operation["responses"], (method, path)
