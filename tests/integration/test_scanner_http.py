"""scan_domain against a real HTTP server on 127.0.0.1, reached through a resolver override."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.settings import Settings
from worker_service.scanner import scan_domain

HOME = (
    b"<html><head><title>\n  Local   Test Site </title></head>"
    b"<body>Welcome to the ACME test site. acme! Mail: info@example.com</body></html>"
)
NO_RULES: dict[str, Any] = {"keywords": [], "regexes": []}


@dataclass(frozen=True)
class Route:
    status: int = 200
    body: bytes = HOME
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass
class LocalSite:
    """Serves `routes` by path; records (Host, path) of every request."""

    port: int = 0
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def site() -> Iterator[LocalSite]:
    local = LocalSite()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                local.requests.append((self.headers.get("Host", ""), self.path))
            route = local.routes.get(self.path, Route(status=404, body=b"not found"))
            if route.hang:
                local.release.wait(10)
                return
            self.send_response(route.status)
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    local.port = server.server_address[1]
    # A short poll keeps teardown fast: shutdown() waits for the next poll.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield local
    finally:
        local.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


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


async def test_home_page_title_status_and_timing_are_reported(site: LocalSite) -> None:
    site.routes["/"] = Route(headers={"X-Frame-Options": "DENY", "Server": "test"})

    report = await scan_domain("example.com", NO_RULES, scan_settings(site.port))

    assert json.loads(json.dumps(report)) == report
    assert report["domain"] == "example.com"
    assert report["dns"] == {"a": ["127.0.0.1"], "aaaa": [], "error": None}
    page = report["http"]
    assert page["url"] == "http://example.com/"
    assert page["status"] == 200
    assert page["title"] == "Local Test Site"
    assert isinstance(page["elapsed_ms"], int)
    assert page["elapsed_ms"] >= 0
    assert (page["body_bytes"], page["truncated"]) == (len(HOME), False)
    assert page["redirects"] == []
    assert page["headers"] == {"x-frame-options": "DENY"}
    assert report["findings"] == []
    assert site.requests == [("example.com", "/")]


async def test_redirect_chain_is_followed_across_hosts(site: LocalSite) -> None:
    site.routes["/"] = Route(status=302, headers={"Location": "/step"})
    site.routes["/step"] = Route(status=301, headers={"Location": "http://www.example.com/end"})
    site.routes["/end"] = Route(body=b"<title>The End</title>")

    report = await scan_domain("example.com", NO_RULES, scan_settings(site.port))

    page = report["http"]
    assert page["status"] == 200
    assert page["title"] == "The End"
    assert page["url"] == "http://www.example.com/end"
    assert page["redirects"] == ["http://example.com/step", "http://www.example.com/end"]
    assert site.requests == [
        ("example.com", "/"),
        ("example.com", "/step"),
        ("www.example.com", "/end"),
    ]


async def test_body_is_cut_at_the_cap_and_marked_truncated(site: LocalSite) -> None:
    site.routes["/"] = Route(body=b"<title>Big</title>" + b"x" * 50_000)

    report = await scan_domain(
        "example.com", NO_RULES, scan_settings(site.port, fetch_max_body_bytes=2048)
    )

    page = report["http"]
    assert (page["body_bytes"], page["truncated"], page["title"]) == (2048, True, "Big")


async def test_loopback_target_is_blocked_by_the_guard_without_a_request(site: LocalSite) -> None:
    site.routes["/"] = Route()

    report = await scan_domain(
        "example.com", NO_RULES, scan_settings(site.port, allow_private=False)
    )

    assert report["http"]["error"] == (
        "http://example.com/: blocked by SSRF guard: 127.0.0.1 is loopback"
    )
    assert report["dns"]["a"] == ["127.0.0.1"]
    assert report["findings"] == []
    assert site.requests == []


async def test_too_many_redirects_is_reported(site: LocalSite) -> None:
    site.routes["/"] = Route(status=302, headers={"Location": "/"})

    report = await scan_domain("example.com", NO_RULES, scan_settings(site.port, max_redirects=3))

    assert report["http"]["error"] == "too many redirects (limit 3)"
    assert report["http"]["redirects"] == ["http://example.com/"] * 3
    assert len(site.requests) == 4


async def test_connection_refused_is_a_finding_not_an_exception() -> None:
    report = await scan_domain("example.com", NO_RULES, scan_settings(free_port()))

    assert report["http"]["error"] == "http://example.com/: connection refused"
    assert report["http"]["attempts"] == [
        {"url": "http://example.com/", "error": "connection refused"}
    ]


async def test_every_scheme_failing_reports_each_error() -> None:
    settings = scan_settings(free_port(), https_port=free_port(), schemes=["https", "http"])

    report = await scan_domain("example.com", NO_RULES, settings)

    assert report["http"]["error"] == (
        "https://example.com/: connection refused; http://example.com/: connection refused"
    )


async def test_tls_failure_falls_back_to_http(site: LocalSite) -> None:
    site.routes["/"] = Route()
    # The https port serves plain HTTP, so the TLS handshake itself fails.
    settings = scan_settings(site.port, https_port=site.port, schemes=["https", "http"])

    report = await scan_domain("example.com", NO_RULES, settings)

    assert report["http"]["url"] == "http://example.com/"
    assert report["http"]["status"] == 200


async def test_a_server_that_never_answers_times_out(site: LocalSite) -> None:
    site.routes["/"] = Route(hang=True)

    report = await scan_domain(
        "example.com", NO_RULES, scan_settings(site.port, fetch_timeout_s=0.3)
    )

    assert report["http"]["error"] == "http://example.com/: timeout after 0.3s"


async def test_keyword_and_regex_findings_are_reported(site: LocalSite) -> None:
    site.routes["/"] = Route()
    config = {"keywords": ["acme", "casino"], "regexes": [r"[a-z]+@example\.com", r"\d{9}"]}

    report = await scan_domain("example.com", config, scan_settings(site.port))

    assert report["findings"] == [
        {"rule": "keyword", "pattern": "acme", "count": 2},
        {"rule": "regex", "pattern": r"[a-z]+@example\.com", "count": 1},
    ]
