"""Normalising and vetting target domains before anything is stored."""

from __future__ import annotations

import ipaddress

import idna

from shared.errors import InvalidInput

MAX_INPUT_CHARS = 1024
MAX_DOMAIN_CHARS = 253
MAX_LABEL_CHARS = 63
FIELD = "target_domain"

# Names that only resolve inside a private network, or never resolve at all.
PRIVATE_SUFFIXES = (
    "localhost",
    "local",
    "internal",
    "intranet",
    "lan",
    "home",
    "corp",
    "private",
    "invalid",
    "home.arpa",
    "in-addr.arpa",
    "ip6.arpa",
)


def _reject(reason: str) -> InvalidInput:
    return InvalidInput(reason, field=FIELD)


def _check_shape(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise _reject("must not be empty")
    if len(value) > MAX_INPUT_CHARS:
        raise _reject(f"must be at most {MAX_DOMAIN_CHARS} characters")
    if "://" in value:
        raise _reject("must be a bare domain name, without a scheme such as https://")
    if any(char in value for char in "/?#@:[]\\") or any(char.isspace() for char in value):
        raise _reject("must be a bare domain name, without path, port, credentials or spaces")
    return value.rstrip(".") if value.endswith(".") and not value.endswith("..") else value


def _check_not_ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        raise _reject("IP addresses are not accepted; give a domain name")
    # Top-level domains are never numeric; "127.1" or "10.0.0.1" style names are addresses.
    if value.rsplit(".", 1)[-1].isdigit():
        raise _reject("IP addresses are not accepted; give a domain name")


def _to_ascii(value: str) -> str:
    try:
        ascii_name = idna.encode(value, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as exc:
        raise _reject(f"is not a valid domain name ({exc})") from exc
    except UnicodeError as exc:
        raise _reject("is not a valid domain name") from exc
    return ascii_name.lower()


def _check_lengths(name: str) -> None:
    """Lengths first, so an over-long name gets that reason rather than a generic one."""
    if len(name) > MAX_DOMAIN_CHARS:
        raise _reject(f"must be at most {MAX_DOMAIN_CHARS} characters")
    if any(not label or len(label) > MAX_LABEL_CHARS for label in name.split(".")):
        raise _reject(f"each label must have 1 to {MAX_LABEL_CHARS} characters")


def _check_labels(name: str) -> None:
    _check_lengths(name)
    labels = name.split(".")
    if len(labels) < 2:
        raise _reject("must have at least two labels, such as example.com")
    for label in labels:
        if label.startswith("-") or label.endswith("-"):
            raise _reject("labels must not start or end with a hyphen")
        if not all(char.isalnum() or char in "-_" for char in label):
            raise _reject("labels may hold only letters, digits and hyphens")


def _check_public(name: str) -> None:
    for suffix in PRIVATE_SUFFIXES:
        if name == suffix or name.endswith("." + suffix):
            raise _reject(f"names under .{suffix} are private or reserved and cannot be scanned")


def normalise_domain(raw: str) -> str:
    """The IDNA (ASCII, lower-case) form of a public domain name, or InvalidInput naming why not."""
    value = _check_shape(raw)
    _check_not_ip(value)
    _check_lengths(value)
    name = _to_ascii(value)
    _check_labels(name)
    _check_not_ip(name)
    _check_public(name)
    return name
