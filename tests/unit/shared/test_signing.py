"""Callback signatures per Standard Webhooks: base64 HMAC-SHA256 over "id.timestamp.body"
keyed by the secret's decoded base64, one `v1,` per secret; the deprecated Scan-* beside."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from shared import signing


def test_the_signature_is_base64_hmac_sha256_over_id_timestamp_body_with_the_decoded_key() -> None:
    key = secrets.token_bytes(32)
    secret = "whsec_" + base64.b64encode(key).decode()
    digest = hmac.new(key, b"msg_1.1700000000.{}", hashlib.sha256).digest()
    assert signing.signature(secret, "msg_1", 1700000000, b"{}") == (
        "v1," + base64.b64encode(digest).decode()
    )


def test_the_standardwebhooks_library_signs_the_same_for_a_new_secret() -> None:
    secret = signing.new_secret()
    when = datetime.fromtimestamp(1700000000, tz=UTC)
    expected = Webhook(secret).sign("msg_2", when, b'{"a":1}')
    assert signing.signature(secret, "msg_2", 1700000000, b'{"a":1}') == expected


def test_a_url_safe_secret_of_an_earlier_release_keys_with_its_32_random_bytes() -> None:
    raw = secrets.token_bytes(32)
    legacy = "whsec_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    standard = "whsec_" + base64.b64encode(raw).decode()
    assert signing.signing_key(legacy) == raw
    # The receiver converts it once to the standard alphabet, and any library verifies.
    assert signing.signature(legacy, "m", 5, b"x") == signing.signature(standard, "m", 5, b"x")


def test_a_hand_written_secret_that_is_no_base64_keys_with_its_text() -> None:
    assert signing.signing_key("whsec_not base64!") == b"whsec_not base64!"


def test_every_secret_in_use_signs_current_first_space_separated() -> None:
    new, old = signing.new_secret(), signing.new_secret()
    header = signing.signature_header([new, old], "m", 5, b"x")
    assert (
        header == f"{signing.signature(new, 'm', 5, b'x')} {signing.signature(old, 'm', 5, b'x')}"
    )


def test_headers_verify_with_the_standardwebhooks_library_and_carry_no_secret() -> None:
    secret, other = signing.new_secret(), signing.new_secret()
    now = int(datetime.now(UTC).timestamp())
    headers = signing.headers("d-1", "task.finished", [secret, other], now, b'{"ok":true}')
    assert headers["webhook-id"] == "d-1"
    assert headers["webhook-timestamp"] == str(now)
    assert Webhook(secret).verify(b'{"ok":true}', headers) == {"ok": True}
    assert Webhook(other).verify(b'{"ok":true}', headers) == {"ok": True}
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(b'{"ok":true}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"ok":false}', headers)
    assert secret not in str(headers)
    assert other not in str(headers)


def test_the_deprecated_scan_headers_are_signed_as_before() -> None:
    headers = signing.headers("d-1", "task.finished", ["whsec_k"], 7, b"{}")
    assert headers["Scan-Delivery-Id"] == "d-1"
    assert headers["Scan-Event"] == "task.finished"
    assert headers["Scan-Timestamp"] == "7"
    old = hmac.new(b"whsec_k", b"7.{}", hashlib.sha256).hexdigest()
    assert headers["Scan-Signature"] == f"v1={old}"


def test_new_secrets_are_prefixed_standard_base64_of_32_bytes_and_unique() -> None:
    first, second = signing.new_secret(), signing.new_secret()
    assert first.startswith(signing.SECRET_PREFIX)
    assert first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32
