"""scan_domain against a real HTTP server on 127.0.0.1, reached through a resolver override."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from shared.settings import Settings
from tests.sites import HOME, Route, RoutedSite, routed_site
from worker_service.scanner import scan_domain

NO_RULES: dict[str, Any] = {"keywords": [], "regexes": []}


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def site() -> Iterator[RoutedSite]:
    with routed_site() as local:
        yield local


def scan_settings(http_port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "resolver_overrides": {"example.com": "127.0.0.1"},
        "allow_private": True,
        "schemes": ["http"],
        "http_port": http_port,
        "fetch_timeout_s": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


async def test_home_page_title_status_and_timing_are_reported(site: RoutedSite) -> None:
    site.routes["/"] = Route(headers={"X-Frame-Options": "DENY", "Server": "test"})

    report = await scan_domain("example.com", NO_RULES, scan_settings(site.port))

    assert json.loads(json.dumps(report)) == report
    assert report["domain"] == "example.com"
    assert report["dns"] == {
        "a": ["127.0.0.1"],
        "aaaa": [],
        "cname": [],
        "mx": [],
        "txt": [],
        "error": None,
    }
    page = report["http"]
    assert page["url"] == "http://example.com/"
    assert page["status"] == 200
    assert page["title"] == "Local Test Site"
    assert isinstance(page["elapsed_ms"], int)
    assert page["elapsed_ms"] >= 0
    assert (page["body_bytes"], page["truncated"]) == (len(HOME), False)
    assert page["redirects"] == []
    assert [(hop["url"], hop["status"]) for hop in page["chain"]] == [("http://example.com/", 200)]
    assert page["security_headers"] == {
        "present": {"x-frame-options": "DENY"},
        "missing": [
            "strict-transport-security",
            "content-security-policy",
            "x-content-type-options",
            "referrer-policy",
        ],
    }
    assert page["tls"] is None
    assert "https" not in report
    assert report["findings"] == []
    assert report["rules_applied_to"] == "http://example.com/"
    assert site.requests == [("example.com", "/")]


async def test_redirect_chain_is_followed_across_hosts(site: RoutedSite) -> None:
    site.routes["/"] = Route(status=302, headers={"Location": "/step"})
    site.routes["/step"] = Route(status=301, headers={"Location": "http://www.example.com/end"})
    site.routes["/end"] = Route(body=b"<title>The End</title>")

    report = await scan_domain("example.com", NO_RULES, scan_settings(site.port))

    page = report["http"]
    assert page["status"] == 200
    assert page["title"] == "The End"
    assert page["url"] == "http://www.example.com/end"
    assert page["redirects"] == ["http://example.com/step", "http://www.example.com/end"]
    assert [hop["status"] for hop in page["chain"]] == [302, 301, 200]
    assert site.requests == [
        ("example.com", "/"),
        ("example.com", "/step"),
        ("www.example.com", "/end"),
    ]


async def test_body_is_cut_at_the_cap_and_marked_truncated(site: RoutedSite) -> None:
    site.routes["/"] = Route(body=b"<title>Big</title>" + b"x" * 50_000)

    report = await scan_domain(
        "example.com", NO_RULES, scan_settings(site.port, fetch_max_body_bytes=2048)
    )

    page = report["http"]
    assert (page["body_bytes"], page["truncated"], page["title"]) == (2048, True, "Big")


async def test_loopback_target_is_blocked_by_the_guard_without_a_request(site: RoutedSite) -> None:
    site.routes["/"] = Route()

    report = await scan_domain(
        "example.com", NO_RULES, scan_settings(site.port, allow_private=False)
    )

    assert report["http"]["error"] == "blocked by SSRF guard: 127.0.0.1 is loopback"
    assert report["dns"]["a"] == ["127.0.0.1"]
    assert report["findings"] == []
    assert site.requests == []


async def test_too_many_redirects_is_reported(site: RoutedSite) -> None:
    site.routes["/"] = Route(status=302, headers={"Location": "/"})

    report = await scan_domain("example.com", NO_RULES, scan_settings(site.port, max_redirects=3))

    assert report["http"]["error"] == "too many redirects (limit 3)"
    assert report["http"]["redirects"] == ["http://example.com/"] * 3
    assert len(site.requests) == 4


async def test_connection_refused_is_a_finding_not_an_exception() -> None:
    report = await scan_domain("example.com", NO_RULES, scan_settings(free_port()))

    assert report["http"]["error"] == "connection refused"
    [hop] = report["http"]["chain"]
    assert (hop["url"], hop["status"], hop["error"]) == (
        "http://example.com/",
        None,
        "connection refused",
    )


async def test_every_scheme_failing_reports_each_error() -> None:
    settings = scan_settings(free_port(), https_port=free_port(), schemes=["https", "http"])

    report = await scan_domain("example.com", NO_RULES, settings)

    assert report["https"]["error"] == report["http"]["error"] == "connection refused"
    assert (report["https"]["url"], report["http"]["url"]) == (
        "https://example.com/",
        "http://example.com/",
    )
    assert report["rules_applied_to"] is None


async def test_a_tls_failure_leaves_the_http_fetch_and_its_rules(site: RoutedSite) -> None:
    site.routes["/"] = Route()
    # The https port serves plain HTTP, so the TLS handshake itself fails.
    settings = scan_settings(site.port, https_port=site.port, schemes=["https", "http"])

    report = await scan_domain("example.com", {"keywords": ["acme"]}, settings)

    assert report["https"]["error"].startswith("TLS error: ")
    assert (report["http"]["url"], report["http"]["status"]) == ("http://example.com/", 200)
    assert report["rules_applied_to"] == "http://example.com/"
    assert [finding["pattern"] for finding in report["findings"]] == ["acme"]


async def test_a_server_that_never_answers_times_out(site: RoutedSite) -> None:
    site.routes["/"] = Route(hang=True)

    report = await scan_domain(
        "example.com", NO_RULES, scan_settings(site.port, fetch_timeout_s=0.3)
    )

    assert report["http"]["error"] == "timeout after 0.3s"


async def test_the_scan_stops_at_its_total_time_limit(site: RoutedSite) -> None:
    site.routes["/"] = Route(status=302, headers={"Location": "/slow"})
    site.routes["/slow"] = Route(hang=True)

    report = await scan_domain(
        "example.com", NO_RULES, scan_settings(site.port, fetch_timeout_s=5, total_timeout_s=0.4)
    )

    assert report["http"]["error"] == "scan time limit of 0.4s reached"
    assert [hop["status"] for hop in report["http"]["chain"]] == [302, None]


async def test_a_redirect_to_a_metadata_address_is_refused_even_with_private_allowed(
    site: RoutedSite,
) -> None:
    site.routes["/"] = Route(status=302, headers={"Location": "http://169.254.169.254/latest/"})

    report = await scan_domain("example.com", NO_RULES, scan_settings(site.port))

    assert report["http"]["error"] == "blocked by SSRF guard: 169.254.169.254 is cloud metadata"
    assert report["http"]["redirects"] == ["http://169.254.169.254/latest/"]
    assert site.requests == [("example.com", "/")]


async def test_keyword_and_regex_findings_are_reported(site: RoutedSite) -> None:
    site.routes["/"] = Route()
    config = {"keywords": ["acme", "casino"], "regexes": [r"[a-z]+@example\.com", r"\d{9}"]}

    report = await scan_domain("example.com", config, scan_settings(site.port))

    assert [
        (finding["rule"], finding["pattern"], finding["count"]) for finding in report["findings"]
    ] == [("keyword", "acme", 2), ("regex", r"[a-z]+@example\.com", 1)]
    assert "Welcome to the ACME test site" in report["findings"][0]["excerpt"]
    assert report["findings"][1]["excerpt"].endswith("Mail: info@example.com</body></html>")
