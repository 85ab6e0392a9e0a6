"""Callback signatures: HMAC-SHA256 over "<timestamp>.<body>", one `v1=` per secret."""

from __future__ import annotations

import hashlib
import hmac

from shared import signing


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(b"whsec_k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert signing.signature("whsec_k", 1700000000, b"{}") == expected


def test_every_secret_in_use_signs_current_first() -> None:
    header = signing.signature_header(["new", "old"], 5, b"x")
    assert (
        header == f"v1={signing.signature('new', 5, b'x')},v1={signing.signature('old', 5, b'x')}"
    )


def test_headers_carry_id_event_timestamp_and_signature_but_no_secret() -> None:
    headers = signing.headers("d-1", "task.finished", ["whsec_secret"], 7, b"{}")
    assert headers[signing.DELIVERY_ID_HEADER] == "d-1"
    assert headers[signing.EVENT_HEADER] == "task.finished"
    assert headers[signing.TIMESTAMP_HEADER] == "7"
    assert "whsec_secret" not in str(headers)


def test_new_secrets_are_prefixed_and_unique() -> None:
    first, second = signing.new_secret(), signing.new_secret()
    assert first.startswith(signing.SECRET_PREFIX)
    assert first != second
    assert len(first) > 40
