"""The SSRF guard refuses every address a scan must not reach, however it is written."""

from __future__ import annotations

import pytest

from worker_service.scanner import guard

FORBIDDEN = [
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "127.0.0.1",
    "127.255.0.9",
    "169.254.10.20",
    "169.254.169.254",
    "224.0.0.251",
    "240.0.0.1",
    "255.255.255.255",
    "0.0.0.0",
    "100.64.0.1",
    "100.127.255.254",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "fd00:ec2::254",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::",
    "2002:a00:1::",
    "2002:a9fe:a9fe::",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "not-an-address",
    "",
]
PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "2002:5db8:d70e::"]


@pytest.mark.parametrize("ip", FORBIDDEN)
def test_forbidden_addresses_are_refused(ip: str) -> None:
    assert guard.is_forbidden_address(ip)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_unicast_addresses_are_allowed(ip: str) -> None:
    assert not guard.is_forbidden_address(ip)
    assert guard.forbidden_reason(ip) is None


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("100.64.0.1", "shared address space"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("0.0.0.0", "unspecified"),
        ("ff02::1", "multicast"),
    ],
)
def test_reason_names_the_kind_of_address(ip: str, reason: str) -> None:
    assert guard.forbidden_reason(ip) == reason


@pytest.mark.parametrize(
    ("ip", "inner"),
    [
        ("::ffff:169.254.169.254", "cloud metadata (169.254.169.254 embedded in IPv6)"),
        ("2002:7f00:1::", "loopback (127.0.0.1 embedded in IPv6)"),
        ("64:ff9b::a00:1", "private (10.0.0.1 embedded in IPv6)"),
    ],
)
def test_embedded_ipv4_is_judged_by_the_inner_address(ip: str, inner: str) -> None:
    assert guard.forbidden_reason(ip) == inner


def test_allowed_addresses_drops_forbidden_ones_and_keeps_order() -> None:
    addresses = ["10.0.0.1", "8.8.8.8", "::1", "2606:4700:4700::1111"]

    allowed = guard.allowed_addresses(addresses, allow_private=False)

    assert allowed == ["8.8.8.8", "2606:4700:4700::1111"]


def test_allowed_addresses_names_every_refusal_when_none_remain() -> None:
    with pytest.raises(guard.ForbiddenTarget) as caught:
        guard.allowed_addresses(["127.0.0.1", "10.0.0.1"], allow_private=False)

    assert caught.value.message == (
        "blocked by SSRF guard: 127.0.0.1 is loopback; 10.0.0.1 is private"
    )


def test_allowed_addresses_refuses_an_empty_list() -> None:
    with pytest.raises(guard.ForbiddenTarget, match="no address to connect to"):
        guard.allowed_addresses([], allow_private=True)


def test_allow_private_admits_private_and_loopback() -> None:
    addresses = ["127.0.0.1", "10.0.0.1", "::1"]

    assert guard.allowed_addresses(addresses, allow_private=True) == addresses


@pytest.mark.parametrize("ip", ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"])
def test_allow_private_still_refuses_cloud_metadata(ip: str) -> None:
    with pytest.raises(guard.ForbiddenTarget, match="cloud metadata"):
        guard.allowed_addresses([ip], allow_private=True)


def test_allow_private_still_refuses_strings_that_are_not_addresses() -> None:
    with pytest.raises(guard.ForbiddenTarget, match="not an IP address"):
        guard.allowed_addresses(["localhost"], allow_private=True)
