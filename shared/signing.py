"""Completion callback signatures per Standard Webhooks 1.0: `webhook-signature` holds
`v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">`, one per secret in
use (space-separated during a rotation), keyed by the base64 after `whsec_` decoded.

The `Scan-*` headers of earlier releases are still sent beside them, signed as before
(hex HMAC of "<timestamp>.<body>" keyed by the secret's literal text), for one release:
they are deprecated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
# The Standard Webhooks range is 24 to 64 bytes.
SECRET_BYTES = 32
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
# Deprecated: sent for one release beside the standard ones.
LEGACY_DELIVERY_ID_HEADER = "Scan-Delivery-Id"
LEGACY_TIMESTAMP_HEADER = "Scan-Timestamp"
LEGACY_SIGNATURE_HEADER = "Scan-Signature"
LEGACY_EVENT_HEADER = "Scan-Event"


def new_secret() -> str:
    """`whsec_` and 256 random bits in standard base64, shown to the user once."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signing_key(secret: str) -> bytes:
    """The HMAC key of `secret`: the base64 after `whsec_`, decoded. Both alphabets are
    read, padding optional (secrets issued before the standard headers were URL-safe,
    unpadded; their key is the same 32 random bytes). A secret that is no base64 at all
    (only ever written by hand) keys with its own UTF-8 text."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    standard = encoded.replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return secret.encode()
    return key or secret.encode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of "<message_id>.<timestamp>.<body>"."""
    message = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(
    secrets_in_use: Sequence[str], message_id: str, timestamp: int, body: bytes
) -> str:
    """One signature per secret, current first, space-separated."""
    return " ".join(signature(secret, message_id, timestamp, body) for secret in secrets_in_use)


def legacy_signature_header(secrets_in_use: Sequence[str], timestamp: int, body: bytes) -> str:
    """The deprecated `Scan-Signature`: `v1=<hex>` per secret, comma-separated."""
    message = str(timestamp).encode() + b"." + body
    return ",".join(
        "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
        for secret in secrets_in_use
    )


def headers(
    delivery_id: str, event: str, secrets_in_use: Sequence[str], timestamp: int, body: bytes
) -> dict[str, str]:
    """Every header of a callback POST but Host; none carries a secret."""
    return {
        "Content-Type": "application/json",
        ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature_header(secrets_in_use, delivery_id, timestamp, body),
        LEGACY_DELIVERY_ID_HEADER: delivery_id,
        LEGACY_EVENT_HEADER: event,
        LEGACY_TIMESTAMP_HEADER: str(timestamp),
        LEGACY_SIGNATURE_HEADER: legacy_signature_header(secrets_in_use, timestamp, body),
    }
