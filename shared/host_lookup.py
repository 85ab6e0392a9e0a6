"""Address lookups for hosts the services call themselves (completion callback receivers),
on dnspython's asyncio resolver: a lookup that never gets an answer costs one socket and one
coroutine until its timeout, never a thread of the event loop's default executor, which the
relay's publishing and whereabouts calls need (`loop.getaddrinfo` runs there)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from shared.settings import Settings, split_host_port


class LookupFailed(OSError):
    """The name has no address, or no answer came in time; the message says which."""


def _normalise(name: str) -> str:
    return name.strip().lower().rstrip(".")


def match_override(name: str, overrides: Mapping[str, str]) -> str | None:
    """The address of the longest key of `overrides` (SCAN_RESOLVER_OVERRIDES) that is `name`
    or a parent domain of it, both compared without case or a trailing dot; None if none is."""
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


def new_resolver(settings: Settings) -> dns.asyncresolver.Resolver:
    """The system's resolver, or one asking only `dns_nameservers` when they are set."""
    if not settings.dns_nameservers:
        return dns.asyncresolver.Resolver()
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [
        dns.nameserver.Do53Nameserver(*split_host_port(entry, 53))
        for entry in settings.dns_nameservers
    ]
    return resolver


async def _query(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: str, timeout_s: float
) -> list[str]:
    try:
        answer = await resolver.resolve(name, rdtype, lifetime=timeout_s, search=False)
    except dns.resolver.NoAnswer:
        return []
    except dns.resolver.NXDOMAIN as exc:
        raise LookupFailed("NXDOMAIN") from exc
    except dns.exception.Timeout as exc:
        raise LookupFailed("timeout") from exc
    except dns.exception.DNSException as exc:
        raise LookupFailed(type(exc).__name__) from exc
    return [rdata.to_text() for rdata in answer]


async def lookup_addresses(host: str, settings: Settings, timeout_s: float) -> list[str]:
    """`host`'s IPv4 then IPv6 addresses, both asked at once; LookupFailed when it has none
    or no answer came within `timeout_s`."""
    try:
        resolver = new_resolver(settings)
    except dns.resolver.NoResolverConfiguration as exc:
        raise LookupFailed("no resolver configuration") from exc
    # An absolute name keeps the system's search domains out of the lookup.
    name = host.lower().rstrip(".") + "."
    queries = (_query(resolver, name, rdtype, timeout_s) for rdtype in ("A", "AAAA"))
    try:
        async with asyncio.timeout(timeout_s):
            answers = await asyncio.gather(*queries, return_exceptions=True)
    except TimeoutError as exc:
        raise LookupFailed("timeout") from exc
    addresses = [address for answer in answers if isinstance(answer, list) for address in answer]
    if addresses:
        return addresses
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    raise LookupFailed("no address")
