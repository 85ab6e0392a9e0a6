"""HTTPS scans against a local server whose certificate a test CA (trustme) issued."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from shared.settings import Settings
from tests.sites import Route, RoutedSite, routed_site
from worker_service.scanner import scan_domain

NO_RULES: dict[str, Any] = {"keywords": [], "regexes": []}
NAMES = ("example.com", "www.example.com")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="Scan Test CA")


@pytest.fixture(scope="module")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture
def site(ca: trustme.CA) -> Iterator[RoutedSite]:
    with routed_site(server_context(ca.issue_cert(*NAMES))) as local:
        yield local


def https_settings(port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "resolver_overrides": {"example.com": "127.0.0.1"},
        "allow_private": True,
        "schemes": ["https"],
        "https_port": port,
        "fetch_timeout_s": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


async def test_a_certificate_from_the_configured_ca_bundle_is_trusted_and_described(
    site: RoutedSite, ca_bundle: Path
) -> None:
    site.routes["/"] = Route(
        headers={"Strict-Transport-Security": "max-age=63072000", "Referrer-Policy": "no-referrer"}
    )

    report = await scan_domain(
        "example.com",
        {"keywords": ["acme"]},
        https_settings(site.port, tls_ca_bundle=str(ca_bundle)),
    )

    page = report["https"]
    assert (page["url"], page["status"], page["title"]) == (
        "https://example.com/",
        200,
        "Local Test Site",
    )
    facts = page["tls"]
    assert facts["trusted"] is True
    assert facts["protocol"] in ("TLSv1.2", "TLSv1.3")
    assert facts["subject_names"] == list(NAMES)
    assert "O=Scan Test CA" in facts["issuer"]
    assert facts["expires_in_days"] > 0
    assert datetime.fromisoformat(facts["not_after"]) > datetime.now(UTC)
    assert page["security_headers"]["present"] == {
        "strict-transport-security": "max-age=63072000",
        "referrer-policy": "no-referrer",
    }
    assert page["security_headers"]["missing"] == [
        "content-security-policy",
        "x-frame-options",
        "x-content-type-options",
    ]
    assert report["rules_applied_to"] == "https://example.com/"
    assert [finding["rule"] for finding in report["findings"]] == ["keyword"]
    assert site.requests == [("example.com", "/")]


async def test_an_untrusted_certificate_fails_the_https_fetch_by_default(
    site: RoutedSite,
) -> None:
    site.routes["/"] = Route()

    report = await scan_domain("example.com", NO_RULES, https_settings(site.port))

    assert report["https"]["error"].startswith("TLS certificate error: ")
    assert report["findings"] == []
    assert site.requests == []


async def test_an_untrusted_certificate_can_be_recorded_as_a_finding(site: RoutedSite) -> None:
    site.routes["/"] = Route()

    report = await scan_domain(
        "example.com", NO_RULES, https_settings(site.port, tls_accept_untrusted=True)
    )

    page = report["https"]
    assert page["status"] == 200
    assert page["tls"]["trusted"] is False
    assert page["tls"]["subject_names"] == list(NAMES)
    assert page["tls"]["verify_error"]
    assert report["findings"] == [
        {
            "rule": "tls_untrusted",
            "url": "https://example.com/",
            "detail": page["tls"]["verify_error"],
        }
    ]


async def test_a_certificate_for_another_name_is_a_hostname_mismatch(
    ca: trustme.CA, ca_bundle: Path
) -> None:
    with routed_site(server_context(ca.issue_cert("other.test"))) as other:
        other.routes["/"] = Route()
        report = await scan_domain(
            "example.com", NO_RULES, https_settings(other.port, tls_ca_bundle=str(ca_bundle))
        )

    assert "Hostname mismatch" in report["https"]["error"]


async def test_an_expired_certificate_reports_negative_days_left(
    ca: trustme.CA, ca_bundle: Path
) -> None:
    now = datetime.now(UTC)
    expired = ca.issue_cert(
        *NAMES, not_before=now - timedelta(days=40), not_after=now - timedelta(days=10)
    )
    with routed_site(server_context(expired)) as old:
        old.routes["/"] = Route()
        settings = https_settings(old.port, tls_ca_bundle=str(ca_bundle), tls_accept_untrusted=True)
        report = await scan_domain("example.com", NO_RULES, settings)

    facts = report["https"]["tls"]
    assert facts["trusted"] is False
    assert "expired" in facts["verify_error"]
    assert facts["expires_in_days"] in (-10, -11)


async def test_http_and_https_are_both_fetched_and_https_feeds_the_rules(
    site: RoutedSite, ca_bundle: Path
) -> None:
    site.routes["/"] = Route(body=b"<title>secure</title> acme")
    with routed_site() as plain:
        plain.routes["/"] = Route(
            status=301, headers={"Location": "https://example.com/"}, body=b""
        )
        settings = https_settings(
            site.port,
            http_port=plain.port,
            schemes=["https", "http"],
            tls_ca_bundle=str(ca_bundle),
        )
        report = await scan_domain("example.com", {"keywords": ["acme"]}, settings)

    # The plain site redirects to HTTPS: both chains end on the secure page.
    assert report["http"]["url"] == report["https"]["url"] == "https://example.com/"
    assert [hop["status"] for hop in report["http"]["chain"]] == [301, 200]
    assert report["http"]["tls"]["trusted"] is True
    assert report["rules_applied_to"] == "https://example.com/"
    assert report["findings"][0]["excerpt"] == "<title>secure</title> acme"
