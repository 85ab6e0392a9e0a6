"""A completion callback host's addresses the SSRF guard (`shared.ssrf`) allows: checked when
a URL is submitted and again at every delivery, since a name may resolve elsewhere by then."""

from __future__ import annotations

import idna

from shared import host_lookup, ssrf
from shared.settings import Settings


def ascii_host(host: str) -> str:
    """`host` as it travels in DNS, Host and SNI: an IP literal as it is, a name lower-cased
    in its IDNA (punycode) form; ValueError when a name has no such form."""
    if ssrf.is_ip(host):
        return host
    try:
        return idna.encode(host.rstrip("."), uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"host is not a valid domain name ({exc})") from exc


def host_header(host: str, port: int | None) -> str:
    """The Host header of `host` (ASCII) and a non-default `port`; an IPv6 literal in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


async def allowed_addresses(host: str, settings: Settings, timeout_s: float) -> list[str]:
    """`host`'s addresses the SSRF guard allows (an IP literal itself, a configured
    override of the name or a parent, else DNS within `timeout_s`, on the event loop);
    ForbiddenTarget if none, `host_lookup.LookupFailed` if the name does not resolve.
    A name is looked up in its IDNA form (overrides match that form too)."""
    if ssrf.is_ip(host):
        addresses = [host]
    else:
        try:
            name = ascii_host(host)
        except ValueError as exc:
            raise host_lookup.LookupFailed(str(exc)) from exc
        overrides = settings.resolver_overrides
        # A key written in Unicode matches the name as given, one in punycode its IDNA form.
        pinned = host_lookup.match_override(name, overrides)
        if pinned is None:
            pinned = host_lookup.match_override(host, overrides)
        if pinned is not None:
            addresses = [pinned]
        else:
            addresses = await host_lookup.lookup_addresses(name, settings, timeout_s)
    return ssrf.allowed_addresses(addresses, allow_private=settings.allow_private)
