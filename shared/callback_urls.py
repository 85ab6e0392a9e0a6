"""A completion callback host's addresses the SSRF guard (`shared.ssrf`) allows: checked when
a URL is submitted and again at every delivery, since a name may resolve elsewhere by then."""

from __future__ import annotations

from shared import host_lookup, ssrf
from shared.settings import Settings


def _override(host: str, overrides: dict[str, str]) -> str | None:
    matches = [key for key in overrides if host == key or host.endswith("." + key)]
    return overrides[max(matches, key=len)] if matches else None


async def allowed_addresses(host: str, settings: Settings, timeout_s: float) -> list[str]:
    """`host`'s addresses the SSRF guard allows (an IP literal itself, a configured
    override of the name or a parent, else DNS within `timeout_s`, on the event loop);
    ForbiddenTarget if none, `host_lookup.LookupFailed` if the name does not resolve."""
    if ssrf.forbidden_reason(host) != "not an IP address":
        addresses = [host]
    elif (pinned := _override(host.lower().rstrip("."), settings.resolver_overrides)) is not None:
        addresses = [pinned]
    else:
        addresses = await host_lookup.lookup_addresses(host, settings, timeout_s)
    return ssrf.allowed_addresses(addresses, allow_private=settings.allow_private)
