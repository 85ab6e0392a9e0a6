"""The fetcher connects only to guarded addresses, by IP, with the name in Host and SNI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from worker_service.scanner import http, resolver
from worker_service.scanner.budget import Budget

# Public addresses that are never contacted: every request is answered by a mock transport.
SITE_IP = "93.184.215.14"
OTHER_IP = "93.184.216.34"
OVERRIDES = {
    "example.com": SITE_IP,
    "other.example": OTHER_IP,
    "intranet.example": "10.0.0.7",
    "mapped.example": "::ffff:10.0.0.7",
}
PAGE = b"<html><title>Home</title><body>hi</body></html>"

Handler = Callable[[httpx.Request], httpx.Response]


def ok(**headers: str) -> httpx.Response:
    """A 200 with an unread body, as the real transport returns it."""
    return httpx.Response(200, headers=headers, stream=httpx.ByteStream(PAGE))


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"resolver_overrides": OVERRIDES, "schemes": ["https"]}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def recording(handler: Handler, seen: list[httpx.Request]) -> httpx.MockTransport:
    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return httpx.MockTransport(record)


def redirect_to(location: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/":
            return httpx.Response(302, headers={"Location": location})
        return ok()

    return handler


async def fetch(
    domain: str, transport: httpx.AsyncBaseTransport, scheme: str = "https", **overrides: object
) -> http.HomePage | http.FetchFailure:
    return await http.fetch(domain, scheme, settings(**overrides), transport=transport)


async def test_connects_to_the_checked_ip_with_host_header_and_sni() -> None:
    seen: list[httpx.Request] = []
    transport = recording(lambda _request: ok(), seen)

    result = await fetch("example.com", transport)

    assert isinstance(result, http.HomePage)
    assert (result.url, result.status, result.title) == ("https://example.com/", 200, "Home")
    [request] = seen
    assert (request.url.scheme, request.url.host, request.url.port) == ("https", SITE_IP, None)
    assert request.headers["host"] == "example.com"
    assert request.extensions["sni_hostname"] == "example.com"


async def test_plain_http_sends_no_sni_and_uses_the_configured_port() -> None:
    seen: list[httpx.Request] = []
    transport = recording(lambda _request: ok(), seen)

    await fetch("example.com", transport, "http", http_port=8080)

    [request] = seen
    assert (request.url.host, request.url.port) == (SITE_IP, 8080)
    assert request.headers["host"] == "example.com"
    assert "sni_hostname" not in request.extensions


async def test_redirect_to_another_host_connects_to_that_hosts_checked_ip() -> None:
    seen: list[httpx.Request] = []
    transport = recording(redirect_to("https://other.example/landing?x=1"), seen)

    result = await fetch("example.com", transport, https_port=8443)

    assert isinstance(result, http.HomePage)
    assert result.url == "https://other.example/landing?x=1"
    assert result.redirects == ["https://other.example/landing?x=1"]
    assert [(hop.url, hop.status) for hop in result.chain] == [
        ("https://example.com/", 302),
        ("https://other.example/landing?x=1", 200),
    ]
    second = seen[1]
    assert (second.url.host, second.url.port, second.url.raw_path) == (
        OTHER_IP,
        8443,
        b"/landing?x=1",
    )
    assert second.headers["host"] == "other.example"
    assert second.extensions["sni_hostname"] == "other.example"


async def test_redirect_keeps_an_explicit_port_in_url_and_host_header() -> None:
    seen: list[httpx.Request] = []
    transport = recording(redirect_to("http://other.example:8081/next"), seen)

    await fetch("example.com", transport)

    assert (seen[1].url.host, seen[1].url.port) == (OTHER_IP, 8081)
    assert seen[1].headers["host"] == "other.example:8081"


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://127.0.0.1:8080/admin", "blocked by SSRF guard: 127.0.0.1 is loopback"),
        (
            "http://169.254.169.254/latest/",
            "blocked by SSRF guard: 169.254.169.254 is cloud metadata",
        ),
        ("https://intranet.example/", "blocked by SSRF guard: 10.0.0.7 is private"),
        ("http://[::ffff:7f00:1]/", "blocked by SSRF guard: ::ffff:7f00:1 is loopback"),
        ("http://169.254.10.20/", "blocked by SSRF guard: 169.254.10.20 is link-local"),
        ("http://[fe80::1]/", "blocked by SSRF guard: fe80::1 is link-local"),
        (
            "https://mapped.example/",
            "blocked by SSRF guard: ::ffff:a00:7 is private (10.0.0.7 embedded in IPv6)",
        ),
    ],
)
async def test_redirect_to_a_forbidden_address_is_blocked_before_connecting(
    location: str, reason: str
) -> None:
    seen: list[httpx.Request] = []
    transport = recording(redirect_to(location), seen)

    result = await fetch("example.com", transport)

    assert isinstance(result, http.FetchFailure)
    assert result.error.startswith(reason)
    assert result.redirects == [location]
    assert [(hop.status, hop.error) for hop in result.chain] == [(302, None), (None, result.error)]
    assert len(seen) == 1


async def test_first_hop_to_a_forbidden_address_is_blocked() -> None:
    seen: list[httpx.Request] = []
    transport = recording(lambda _request: ok(), seen)

    result = await fetch("intranet.example", transport, "http")

    assert isinstance(result, http.FetchFailure)
    assert result.error == "blocked by SSRF guard: 10.0.0.7 is private"
    assert result.url == "http://intranet.example/"
    assert seen == []


async def test_redirect_to_another_scheme_is_refused() -> None:
    transport = httpx.MockTransport(redirect_to("ftp://example.com/file"))

    result = await fetch("example.com", transport)

    assert isinstance(result, http.FetchFailure)
    assert result.error == "redirect to unsupported URL 'ftp://example.com/file'"


async def test_too_many_redirects_stop_the_chain() -> None:
    seen: list[httpx.Request] = []
    transport = recording(redirect_to("/"), seen)

    result = await fetch("example.com", transport, max_redirects=2)

    assert isinstance(result, http.FetchFailure)
    assert result.error == "too many redirects (limit 2)"
    assert len(seen) == 3


async def test_security_headers_present_and_missing_are_reported() -> None:
    headers = {"X-Frame-Options": "DENY", "Strict-Transport-Security": "max-age=1", "Server": "x"}
    transport = httpx.MockTransport(lambda _request: ok(**headers))

    result = await fetch("example.com", transport)

    assert isinstance(result, http.HomePage)
    assert result.to_json()["security_headers"] == {
        "present": {"strict-transport-security": "max-age=1", "x-frame-options": "DENY"},
        "missing": ["content-security-policy", "x-content-type-options", "referrer-policy"],
    }


async def test_an_exhausted_budget_stops_before_connecting() -> None:
    seen: list[httpx.Request] = []
    transport = recording(lambda _request: ok(), seen)

    result = await http.fetch(
        "example.com", "https", settings(), transport=transport, budget=Budget.start(0)
    )

    assert isinstance(result, http.FetchFailure)
    assert result.error == "scan time limit of 0s reached"
    assert seen == []


def test_one_candidate_per_family_in_order() -> None:
    addresses = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"]

    assert http.connect_candidates(addresses) == ["192.0.2.1", "2001:db8::1"]


async def test_a_name_resolves_once_so_a_changed_answer_cannot_move_later_hops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter([SITE_IP, "127.0.0.1", "169.254.169.254"])
    lookups: list[str] = []

    async def rebinding(name: str, settings: Settings, **_: Any) -> resolver.Resolution:
        lookups.append(name)
        return resolver.from_address(next(answers))

    monkeypatch.setattr(resolver, "resolve_host", rebinding)
    seen: list[httpx.Request] = []
    hops = {"/": "/again", "/again": "https://rebind.example/last"}

    def handler(request: httpx.Request) -> httpx.Response:
        location = hops.get(request.url.path)
        return httpx.Response(302, headers={"Location": location}) if location else ok()

    result = await fetch("rebind.example", recording(handler, seen))

    assert isinstance(result, http.HomePage), result
    assert lookups == ["rebind.example"]
    assert [request.url.host for request in seen] == [SITE_IP] * 3
    assert {request.headers["host"] for request in seen} == {"rebind.example"}
