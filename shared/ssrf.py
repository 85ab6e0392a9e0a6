"""The SSRF guard: which resolved addresses a scan or a completion callback may connect to."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from shared.errors import ScanOutboxError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CLOUD_METADATA = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
# RFC 6052 well-known and RFC 8215 local-use NAT64 prefixes carry an IPv4 address in the low bits.
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class ForbiddenTarget(ScanOutboxError):
    """No resolved address of a scan target may be connected to."""

    code = "forbidden_target"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    embedded: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        embedded.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        embedded.append(ip.sixtofour)
    if ip.teredo is not None:
        embedded.extend(ip.teredo)
    if any(ip in prefix for prefix in NAT64_PREFIXES):
        embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return embedded


def _own_reason(ip: IPAddress) -> str | None:
    checks = (
        (ip in CLOUD_METADATA, "cloud metadata"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip in SHARED_ADDRESS_SPACE, "shared address space"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    )
    return next((reason for hit, reason in checks if hit), None)


def is_ip(host: str) -> bool:
    """True if `host` is an IPv4 or IPv6 address literal (unbracketed), not a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def forbidden_reason(ip: str) -> str | None:
    """Why `ip` must not be connected to, or None if it is a public unicast address.

    IPv6 forms that embed an IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by that
    address too; anything that does not parse as an address is forbidden.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "not an IP address"
    if isinstance(address, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(address):
            inner_reason = _own_reason(inner)
            if inner_reason is not None:
                return f"{inner_reason} ({inner} embedded in IPv6)"
    return _own_reason(address)


def is_forbidden_address(ip: str) -> bool:
    """True if a scan must never connect to `ip` while private targets are disallowed."""
    return forbidden_reason(ip) is not None


def is_cloud_metadata(ip: str) -> bool:
    """True for a cloud metadata endpoint, directly or embedded in an IPv6 address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if address in CLOUD_METADATA:
        return True
    if isinstance(address, ipaddress.IPv6Address):
        return any(inner in CLOUD_METADATA for inner in _embedded_ipv4(address))
    return False


def _refusal(ip: str, *, allow_private: bool) -> str | None:
    reason = forbidden_reason(ip)
    if reason is None or not allow_private:
        return reason
    # Even a development setup never wants credentials from a metadata endpoint.
    if not is_ip(ip) or is_cloud_metadata(ip):
        return reason
    return None


def allowed_addresses(addresses: Iterable[str], *, allow_private: bool) -> list[str]:
    """The addresses, in order, a scan may connect to; ForbiddenTarget naming why if none.

    `allow_private` lifts the guard for development and tests, except for cloud metadata
    endpoints and strings that are not addresses.
    """
    allowed: list[str] = []
    refusals: list[str] = []
    for ip in addresses:
        reason = _refusal(ip, allow_private=allow_private)
        if reason is None:
            allowed.append(ip)
        else:
            refusals.append(f"{ip} is {reason}")
    if not allowed:
        detail = "; ".join(refusals) if refusals else "no address to connect to"
        raise ForbiddenTarget(f"blocked by SSRF guard: {detail}")
    return allowed


def allowed_addresses_or_none(addresses: Iterable[str], *, allow_private: bool) -> list[str] | None:
    """`allowed_addresses`, or None instead of ForbiddenTarget."""
    try:
        return allowed_addresses(addresses, allow_private=allow_private)
    except ForbiddenTarget:
        return None
