"""Callback URLs vetted at submit: scheme, credentials, and hosts the SSRF guard forbids."""

from __future__ import annotations

import pytest

from api_service.callback_vetting import check_callback_url
from shared.errors import InvalidInput
from shared.settings import Settings

STRICT = Settings(_env_file=None)  # type: ignore[call-arg]
LENIENT = Settings(_env_file=None, allow_private=True, callback_allow_http=True)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/x",
        "https://hooks.example.com:8443/x?y=1",
        "https://93.184.216.34/hook",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
    ],
)
def test_public_https_urls_are_accepted(url: str) -> None:
    assert check_callback_url(url, STRICT) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/x", "must be an https URL"),
        ("https://u:p@hooks.example.com/x", "must not carry credentials"),
        ("https:///x", "must name a host"),
        ("https://127.0.0.1/x", "must not point at a loopback address"),
        ("https://[::ffff:10.0.0.1]/x", "must not point at a private"),
        ("https://169.254.169.254/x", "must not point at a cloud metadata address"),
        ("https://printer.local/x", "host "),
        ("https://hooks.example.com:99999/x", "is not a valid URL"),
        ("https://hooks.example.com/" + "x" * 2048, "at most 2048"),
    ],
)
def test_refusals_name_callback_url_and_why(url: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_callback_url(url, STRICT)
    assert refused.value.field == "callback_url"
    assert reason in refused.value.message


def test_development_settings_allow_http_and_private_hosts_but_never_metadata() -> None:
    assert check_callback_url("http://127.0.0.1:8080/x", LENIENT)
    assert check_callback_url("http://hooks.internal/x", LENIENT)
    with pytest.raises(InvalidInput, match="cloud metadata"):
        check_callback_url("http://169.254.169.254/x", LENIENT)
