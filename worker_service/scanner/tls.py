"""TLS for the fetcher: which certificates to trust, and the facts a scan keeps about one."""

from __future__ import annotations

import functools
import ssl
from datetime import UTC, datetime
from typing import Any

import httpx
from cryptography import x509

from shared.settings import Settings


def verifying_context(settings: Settings) -> ssl.SSLContext:
    """Public CAs, or only the bundle in `tls_ca_bundle` when one is configured."""
    return _verifying_context(settings.tls_ca_bundle)


# Loading a CA store takes milliseconds; every scan of the process can share one context.
@functools.lru_cache(maxsize=4)
def _verifying_context(ca_bundle: str | None) -> ssl.SSLContext:
    if ca_bundle:
        return ssl.create_default_context(cafile=ca_bundle)
    return httpx.create_ssl_context()


@functools.lru_cache(maxsize=1)
def unverified_context() -> ssl.SSLContext:
    """Accepts any certificate: used only to describe one that failed verification."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _subject_names(certificate: x509.Certificate) -> list[str]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(name) for name in extension.value.get_values_for_type(x509.DNSName)]


def describe(ssl_object: ssl.SSLObject | None, *, trusted: bool) -> dict[str, Any] | None:
    """Protocol and certificate facts of an open TLS connection; None if there is none."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    facts: dict[str, Any] = {
        "protocol": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
        "trusted": trusted,
    }
    if not der:
        return facts
    certificate = x509.load_der_x509_certificate(der)
    not_after = certificate.not_valid_after_utc
    facts.update(
        issuer=certificate.issuer.rfc4514_string(),
        subject=certificate.subject.rfc4514_string(),
        subject_names=_subject_names(certificate),
        not_after=not_after.isoformat(),
        expires_in_days=(not_after - datetime.now(UTC)).days,
    )
    return facts
