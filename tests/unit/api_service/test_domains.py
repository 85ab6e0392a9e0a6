import pytest

from api_service.domains import normalise_domain
from shared.errors import InvalidInput


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.COM", "example.com"),
        ("  example.com  ", "example.com"),
        ("example.com.", "example.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com", "example.com"),  # full-width
        ("sub.domain-with-hyphen.co.uk", "sub.domain-with-hyphen.co.uk"),
    ],
)
def test_normalise_domain_returns_lower_case_idna(raw: str, expected: str) -> None:
    assert normalise_domain(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("https://example.com", "scheme"),
        ("example.com/path", "path"),
        ("example.com:8080", "port"),
        ("user@example.com", "credentials"),
        ("exa mple.com", "spaces"),
        ("1.2.3.4", "IP addresses"),
        ("127.1", "IP addresses"),
        ("[::1]", "path"),
        ("localhost", "two labels"),
        ("intranet", "two labels"),
        ("printer.local", ".local"),
        ("db.internal", ".internal"),
        ("router.home.arpa", ".home.arpa"),
        ("-bad.com", "hyphen"),
        ("a" * 64 + ".com", "label"),
        ("a." * 130 + "com", "253"),
        ("x" * 10_000 + ".com", "253"),
    ],
)
def test_normalise_domain_rejects_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        normalise_domain(raw)
    assert caught.value.field == "target_domain"
    assert reason in caught.value.message


def test_homograph_is_normalised_to_its_own_punycode_not_the_lookalike() -> None:
    # Cyrillic U+0430 looks like Latin "a" but must not become apple.com.
    assert normalise_domain("\u0430pple.com") == "xn--pple-43d.com"
