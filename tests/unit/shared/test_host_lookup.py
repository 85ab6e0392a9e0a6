"""Resolver overrides (SCAN_RESOLVER_OVERRIDES) match a name the same way for a scan and for a
completion callback: the longest key that is the name or a parent, without case or a
trailing dot; an IP literal is told from a name by parsing it, never by an error's text."""

from __future__ import annotations

import pytest

from shared import callback_addresses, host_lookup, ssrf
from shared.settings import Settings

OVERRIDES = {"example.com": "192.0.2.1", "deep.example.com": "2001:db8::7", "other.org": "x"}


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("example.com", "192.0.2.1"),
        ("www.example.com", "192.0.2.1"),
        ("a.b.example.com", "192.0.2.1"),
        ("deep.example.com", "2001:db8::7"),
        ("x.deep.example.com", "2001:db8::7"),
        ("WWW.Example.COM.", "192.0.2.1"),
    ],
)
def test_override_matches_the_name_and_its_subdomains_longest_key_first(
    name: str, address: str
) -> None:
    assert host_lookup.match_override(name, OVERRIDES) == address


@pytest.mark.parametrize("name", ["notexample.com", "example.co", "com", "example.com.evil.net"])
def test_override_does_not_match_other_names(name: str) -> None:
    assert host_lookup.match_override(name, OVERRIDES) is None


def test_override_keys_are_compared_case_and_dot_insensitively() -> None:
    assert host_lookup.match_override("a.example.com", {"Example.COM.": "192.0.2.9"}) == "192.0.2.9"


async def test_a_callback_host_matches_an_override_keyed_with_capitals_and_a_trailing_dot() -> None:
    settings = Settings(resolver_overrides={"Hooks.Example.COM.": "192.0.2.9"}, allow_private=True)

    addresses = await callback_addresses.allowed_addresses("api.hooks.example.com", settings, 0.1)

    assert addresses == ["192.0.2.9"]


@pytest.mark.parametrize("host", ["192.0.2.1", "2001:db8::1", "::ffff:10.0.0.1"])
def test_an_address_literal_is_an_ip(host: str) -> None:
    assert ssrf.is_ip(host)


@pytest.mark.parametrize("host", ["example.com", "not an IP address", "[2001:db8::1]", "", "1.2.3"])
def test_a_name_or_anything_else_is_not_an_ip(host: str) -> None:
    assert not ssrf.is_ip(host)
