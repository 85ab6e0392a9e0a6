"""A completion callback host's addresses the SSRF guard (`shared.ssrf`) allows: checked when
a URL is submitted and again at every delivery, since a name may resolve elsewhere by then."""

from __future__ import annotations

import ipaddress

import idna

from shared import host_lookup, ssrf
from shared.settings import Settings


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ascii_host(host: str) -> str:
    """`host` as it travels in DNS, Host and SNI: an IP literal as it is, a name lower-cased
    in its IDNA (punycode) form; ValueError when a name has no such form."""
    if is_ip_literal(host):
        return host
    try:
        return idna.encode(host.rstrip("."), uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"host is not a valid domain name ({exc})") from exc


def host_header(host: str, port: int | None) -> str:
    """The Host header of `host` (ASCII) and a non-default `port`; an IPv6 literal in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def _override(host: str, overrides: dict[str, str]) -> str | None:
    matches = [key for key in overrides if host == key or host.endswith("." + key)]
    return overrides[max(matches, key=len)] if matches else None


async def allowed_addresses(host: str, settings: Settings, timeout_s: float) -> list[str]:
    """`host`'s addresses the SSRF guard allows (an IP literal itself, a configured
    override of the name or a parent, else DNS within `timeout_s`, on the event loop);
    ForbiddenTarget if none, `host_lookup.LookupFailed` if the name does not resolve.
    A name is looked up in its IDNA form (overrides match that form too)."""
    if ssrf.forbidden_reason(host) != "not an IP address":
        addresses = [host]
    else:
        try:
            name = ascii_host(host)
        except ValueError as exc:
            raise host_lookup.LookupFailed(str(exc)) from exc
        pinned = _override(name, settings.resolver_overrides)
        if pinned is None:
            pinned = _override(host.lower().rstrip("."), settings.resolver_overrides)
        if pinned is not None:
            addresses = [pinned]
        else:
            addresses = await host_lookup.lookup_addresses(name, settings, timeout_s)
    return ssrf.allowed_addresses(addresses, allow_private=settings.allow_private)
