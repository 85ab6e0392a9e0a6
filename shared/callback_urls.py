"""A completion callback host's addresses the SSRF guard (`shared.ssrf`) allows: checked when
a URL is submitted and again at every delivery, since a name may resolve elsewhere by then."""

from __future__ import annotations

import asyncio
import socket

from shared import ssrf
from shared.settings import Settings


def _override(host: str, overrides: dict[str, str]) -> str | None:
    matches = [key for key in overrides if host == key or host.endswith("." + key)]
    return overrides[max(matches, key=len)] if matches else None


async def allowed_addresses(host: str, settings: Settings) -> list[str]:
    """`host`'s addresses the SSRF guard allows (an IP literal itself, a configured
    override of the name or a parent, else the system's resolver); ForbiddenTarget if
    none, OSError if the name does not resolve."""
    if ssrf.forbidden_reason(host) != "not an IP address":
        addresses = [host]
    elif (pinned := _override(host.lower().rstrip("."), settings.resolver_overrides)) is not None:
        addresses = [pinned]
    else:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return ssrf.allowed_addresses(addresses, allow_private=settings.allow_private)
