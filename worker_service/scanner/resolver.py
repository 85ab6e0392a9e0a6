"""A and AAAA lookups, answered from configured overrides before DNS is ever asked."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from shared.settings import Settings


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


def match_override(name: str, overrides: Mapping[str, str]) -> str | None:
    """The address of the longest override key that is `name` or a parent domain of it."""
    target = _normalise(name)
    matches = [
        (len(wanted), key)
        for key in overrides
        if (wanted := _normalise(key)) and (target == wanted or target.endswith("." + wanted))
    ]
    if not matches:
        return None
    _length, key = max(matches)
    return overrides[key].strip()


def from_address(address: str) -> Resolution:
    """A resolution holding exactly `address`, or an error if it is not an IP address."""
    try:
        parsed = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return Resolution(error=f"{address!r} is not an IP address")
    if parsed.version == 4:
        return Resolution(a=[str(parsed)])
    return Resolution(aaaa=[str(parsed)])


async def _lookup(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: str, lifetime_s: float
) -> tuple[list[str], str | None]:
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
    return [rdata.to_text() for rdata in answer], None


async def _query_dns(name: str, lifetime_s: float) -> Resolution:
    try:
        resolver = dns.asyncresolver.Resolver()
    except dns.resolver.NoResolverConfiguration:
        return Resolution(error="no resolver configuration")
    (a, a_error), (aaaa, aaaa_error) = await asyncio.gather(
        _lookup(resolver, name, "A", lifetime_s), _lookup(resolver, name, "AAAA", lifetime_s)
    )
    if a or aaaa:
        return Resolution(a=a, aaaa=aaaa)
    if "NXDOMAIN" in (a_error, aaaa_error):
        return Resolution(error="NXDOMAIN")
    return Resolution(error=a_error or aaaa_error or "no answer")


async def resolve_host(name: str, settings: Settings) -> Resolution:
    """A and AAAA addresses of `name`; IP literals and overridden names never reach DNS."""
    host = _normalise(name)
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return from_address(host)
    override = match_override(host, settings.resolver_overrides)
    if override is not None:
        return from_address(override)
    # An absolute name keeps the system's search domains out of the lookup.
    return await _query_dns(host + ".", settings.dns_timeout_s)
