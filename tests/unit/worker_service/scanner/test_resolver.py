"""Resolution answers overrides and IP literals locally and maps DNS failures to short errors."""

from __future__ import annotations

from typing import Any, ClassVar

import dns.asyncresolver
import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import pytest

from shared.settings import Settings
from worker_service.scanner import resolver

OVERRIDES = {"example.com": "192.0.2.1", "deep.example.com": "2001:db8::7", "other.org": "x"}


def failure(kind: type[dns.exception.DNSException], **kwargs: Any) -> Exception:
    """A dnspython exception, built through a typed call: its constructors are unannotated."""
    return kind(**kwargs)


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to build a DNS resolver fails the test."""

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("DNS was queried")

    monkeypatch.setattr(dns.asyncresolver, "Resolver", refuse)


class FakeResolver:
    """Answers from a table of (name, rdtype) -> addresses or an exception; records queries."""

    table: ClassVar[dict[tuple[str, str], list[str] | Exception]] = {}
    queries: ClassVar[list[tuple[str, str, float, bool]]] = []

    async def resolve(self, name: str, rdtype: str, *, lifetime: float, search: bool) -> Any:
        self.queries.append((name, rdtype, lifetime, search))
        outcome = self.table.get((name, rdtype), failure(dns.resolver.NoAnswer))
        if isinstance(outcome, Exception):
            raise outcome
        rdtype_value = dns.rdatatype.from_text(rdtype)
        return [dns.rdata.from_text(dns.rdataclass.IN, rdtype_value, ip) for ip in outcome]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> type[FakeResolver]:
    monkeypatch.setattr(FakeResolver, "table", {})
    monkeypatch.setattr(FakeResolver, "queries", [])
    monkeypatch.setattr(dns.asyncresolver, "Resolver", FakeResolver)
    return FakeResolver


@pytest.mark.usefixtures("no_dns")
async def test_overridden_ipv4_name_answers_a_without_dns() -> None:
    settings = Settings(resolver_overrides=OVERRIDES)

    result = await resolver.resolve_host("www.example.com", settings)

    assert result == resolver.Resolution(a=["192.0.2.1"], aaaa=[], error=None)


@pytest.mark.usefixtures("no_dns")
async def test_overridden_ipv6_name_answers_aaaa_without_dns() -> None:
    settings = Settings(resolver_overrides=OVERRIDES)

    result = await resolver.resolve_host("deep.example.com", settings)

    assert result == resolver.Resolution(a=[], aaaa=["2001:db8::7"], error=None)


@pytest.mark.usefixtures("no_dns")
async def test_override_that_is_not_an_address_is_an_error_not_a_lookup() -> None:
    settings = Settings(resolver_overrides=OVERRIDES)

    result = await resolver.resolve_host("other.org", settings)

    assert result.addresses == []
    assert result.error == "'x' is not an IP address"


@pytest.mark.usefixtures("no_dns")
@pytest.mark.parametrize(
    ("host", "a", "aaaa"), [("10.0.0.1", ["10.0.0.1"], []), ("::1", [], ["::1"])]
)
async def test_ip_literal_resolves_to_itself_without_dns(
    host: str, a: list[str], aaaa: list[str]
) -> None:
    result = await resolver.resolve_host(host, Settings())

    assert (result.a, result.aaaa, result.error) == (a, aaaa, None)


async def test_dns_answers_both_families_with_the_configured_lifetime(
    fake_dns: type[FakeResolver],
) -> None:
    fake_dns.table = {
        ("example.net.", "A"): ["198.51.100.1", "198.51.100.2"],
        ("example.net.", "AAAA"): ["2001:db8::1"],
    }

    result = await resolver.resolve_host("example.net", Settings(dns_timeout_s=2.5))

    assert result == resolver.Resolution(a=["198.51.100.1", "198.51.100.2"], aaaa=["2001:db8::1"])
    assert result.addresses == ["198.51.100.1", "198.51.100.2", "2001:db8::1"]
    assert sorted(fake_dns.queries) == [
        ("example.net.", "A", 2.5, False),
        ("example.net.", "AAAA", 2.5, False),
    ]


async def test_a_missing_family_is_not_an_error(fake_dns: type[FakeResolver]) -> None:
    fake_dns.table = {("example.net.", "AAAA"): ["2001:db8::1"]}

    result = await resolver.resolve_host("example.net", Settings())

    assert result == resolver.Resolution(a=[], aaaa=["2001:db8::1"], error=None)


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (failure(dns.resolver.NXDOMAIN), "NXDOMAIN"),
        (failure(dns.resolver.NoAnswer), "no answer"),
        (failure(dns.resolver.LifetimeTimeout, timeout=1.0, errors=[]), "timeout"),
        (failure(dns.resolver.NoNameservers), "no nameserver answered"),
    ],
)
async def test_dns_failures_become_short_errors(
    fake_dns: type[FakeResolver], outcome: Exception, error: str
) -> None:
    fake_dns.table = {("example.net.", "A"): outcome, ("example.net.", "AAAA"): outcome}

    result = await resolver.resolve_host("example.net", Settings())

    assert result == resolver.Resolution(a=[], aaaa=[], error=error)


def test_resolution_json_has_the_report_shape() -> None:
    resolution = resolver.Resolution(a=["192.0.2.1"], error=None)

    assert resolution.to_json() == {"a": ["192.0.2.1"], "aaaa": [], "error": None}


@pytest.mark.usefixtures("no_dns")
async def test_overridden_name_reports_its_address_and_no_other_records() -> None:
    records = await resolver.lookup_records(
        "www.example.com", Settings(resolver_overrides=OVERRIDES)
    )

    assert records.to_json() == {
        "a": ["192.0.2.1"],
        "aaaa": [],
        "cname": [],
        "mx": [],
        "txt": [],
        "error": None,
    }


async def test_records_of_every_reported_type_are_queried_together(
    fake_dns: type[FakeResolver],
) -> None:
    fake_dns.table = {
        ("example.net.", "A"): ["198.51.100.1"],
        ("example.net.", "CNAME"): ["edge.cdn.example."],
        ("example.net.", "MX"): ["20 backup.example.net.", "10 mail.example.net."],
        ("example.net.", "TXT"): ['"v=spf1 -all"', '"part one" "part two"'],
    }

    records = await resolver.lookup_records("example.net", Settings(dns_timeout_s=1.5))

    assert records.to_json() == {
        "a": ["198.51.100.1"],
        "aaaa": [],
        "cname": ["edge.cdn.example"],
        "mx": [
            {"preference": 10, "exchange": "mail.example.net"},
            {"preference": 20, "exchange": "backup.example.net"},
        ],
        "txt": ["part onepart two", "v=spf1 -all"],
        "error": None,
    }
    assert sorted(query[1] for query in fake_dns.queries) == ["A", "AAAA", "CNAME", "MX", "TXT"]
    assert {query[2] for query in fake_dns.queries} == {1.5}


async def test_a_name_that_does_not_exist_is_reported_not_raised(
    fake_dns: type[FakeResolver],
) -> None:
    fake_dns.table = {
        ("gone.example.", rdtype): failure(dns.resolver.NXDOMAIN)
        for rdtype in ("A", "AAAA", "CNAME", "MX", "TXT")
    }

    records = await resolver.lookup_records("gone.example", Settings())

    assert records.to_json()["error"] == "NXDOMAIN"
    assert records.resolution.addresses == []
