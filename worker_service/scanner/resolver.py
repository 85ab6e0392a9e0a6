"""DNS lookups (A and AAAA for connecting; CNAME, MX and TXT too for the report), answered
from configured overrides before DNS is ever asked."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from shared import ssrf
from shared.host_lookup import match_override, new_resolver
from shared.settings import Settings

MAX_TXT_CHARS = 1024
_REPORTED_TYPES = ("A", "AAAA", "CNAME", "MX", "TXT")


@dataclass(frozen=True, slots=True)
class Resolution:
    """The addresses a name resolved to; `error` is set only when there is none."""

    a: list[str] = field(default_factory=list)
    aaaa: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def addresses(self) -> list[str]:
        """IPv4 first: it is the family most likely to be reachable from a worker."""
        return [*self.a, *self.aaaa]

    def to_json(self) -> dict[str, Any]:
        return {"a": list(self.a), "aaaa": list(self.aaaa), "error": self.error}


def _normalise(name: str) -> str:
    return name.strip().lower().rstrip(".")


def from_address(address: str) -> Resolution:
    """A resolution holding exactly `address`, or an error if it is not an IP address."""
    try:
        parsed = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return Resolution(error=f"{address!r} is not an IP address")
    if parsed.version == 4:
        return Resolution(a=[str(parsed)])
    return Resolution(aaaa=[str(parsed)])


@dataclass(frozen=True, slots=True)
class DnsRecords:
    """What the report says about a name's DNS; `error` as in Resolution."""

    resolution: Resolution
    cname: list[str] = field(default_factory=list)
    mx: list[dict[str, Any]] = field(default_factory=list)
    txt: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "a": list(self.resolution.a),
            "aaaa": list(self.resolution.aaaa),
            "cname": list(self.cname),
            "mx": [dict(record) for record in self.mx],
            "txt": list(self.txt),
            "error": self.resolution.error,
        }


async def _lookup(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: str, lifetime_s: float
) -> tuple[list[Any], str | None]:
    try:
        answer = await resolver.resolve(name, rdtype, lifetime=lifetime_s, search=False)
    except dns.resolver.NXDOMAIN:
        return [], "NXDOMAIN"
    except dns.resolver.NoAnswer:
        return [], None
    except dns.exception.Timeout:
        return [], "timeout"
    except dns.resolver.NoNameservers:
        return [], "no nameserver answered"
    except dns.exception.DNSException as exc:
        return [], f"DNS error: {exc}"
    return list(answer), None


def _addresses(a: tuple[list[Any], str | None], aaaa: tuple[list[Any], str | None]) -> Resolution:
    (a_found, a_error), (aaaa_found, aaaa_error) = a, aaaa
    if a_found or aaaa_found:
        return Resolution(
            a=[rdata.to_text() for rdata in a_found], aaaa=[rdata.to_text() for rdata in aaaa_found]
        )
    if "NXDOMAIN" in (a_error, aaaa_error):
        return Resolution(error="NXDOMAIN")
    return Resolution(error=a_error or aaaa_error or "no answer")


async def _query_dns(name: str, settings: Settings, lifetime_s: float) -> Resolution:
    try:
        resolver = new_resolver(settings)
    except dns.resolver.NoResolverConfiguration:
        return Resolution(error="no resolver configuration")
    a, aaaa = await asyncio.gather(
        _lookup(resolver, name, "A", lifetime_s), _lookup(resolver, name, "AAAA", lifetime_s)
    )
    return _addresses(a, aaaa)


def _local_answer(host: str, settings: Settings) -> Resolution | None:
    """The resolution of an IP literal or an overridden name, which never reach DNS."""
    if ssrf.is_ip(host.strip("[]")):
        return from_address(host)
    override = match_override(host, settings.resolver_overrides)
    return from_address(override) if override is not None else None


async def resolve_host(
    name: str, settings: Settings, *, lifetime_s: float | None = None
) -> Resolution:
    """A and AAAA addresses of `name`; IP literals and overridden names never reach DNS."""
    host = _normalise(name)
    local = _local_answer(host, settings)
    if local is not None:
        return local
    # An absolute name keeps the system's search domains out of the lookup.
    return await _query_dns(host + ".", settings, lifetime_s or settings.dns_timeout_s)


def _txt(rdata: Any) -> str:
    return b"".join(rdata.strings).decode("utf-8", "replace")[:MAX_TXT_CHARS]


async def lookup_records(
    name: str, settings: Settings, *, lifetime_s: float | None = None
) -> DnsRecords:
    """A, AAAA, CNAME, MX and TXT of `name`, queried together; an IP literal or overridden name
    answers its address without DNS and has no other records."""
    host = _normalise(name)
    local = _local_answer(host, settings)
    if local is not None:
        return DnsRecords(local)
    try:
        resolver = new_resolver(settings)
    except dns.resolver.NoResolverConfiguration:
        return DnsRecords(Resolution(error="no resolver configuration"))
    lifetime = lifetime_s or settings.dns_timeout_s
    a, aaaa, cname, mx, txt = await asyncio.gather(
        *(_lookup(resolver, host + ".", rdtype, lifetime) for rdtype in _REPORTED_TYPES)
    )
    return DnsRecords(
        _addresses(a, aaaa),
        cname=[rdata.target.to_text().rstrip(".") for rdata in cname[0]],
        mx=sorted(
            (
                {"preference": rdata.preference, "exchange": rdata.exchange.to_text().rstrip(".")}
                for rdata in mx[0]
            ),
            key=lambda record: (record["preference"], record["exchange"]),
        ),
        txt=sorted(_txt(rdata) for rdata in txt[0]),
    )
