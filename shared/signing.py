"""Completion callback signatures: HMAC-SHA256 over "<timestamp>.<body>" with the user's
secret, sent as `Scan-Signature: v1=<hex>`; during a rotation one `v1=` per valid secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
DELIVERY_ID_HEADER = "Scan-Delivery-Id"
TIMESTAMP_HEADER = "Scan-Timestamp"
SIGNATURE_HEADER = "Scan-Signature"
EVENT_HEADER = "Scan-Event"


def new_secret() -> str:
    """256 random bits, shown to the user once."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secrets_in_use: Sequence[str], timestamp: int, body: bytes) -> str:
    """`v1=<hex>` for each secret, current first, comma-separated."""
    return ",".join(f"v1={signature(secret, timestamp, body)}" for secret in secrets_in_use)


def headers(
    delivery_id: str, event: str, secrets_in_use: Sequence[str], timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        DELIVERY_ID_HEADER: delivery_id,
        EVENT_HEADER: event,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature_header(secrets_in_use, timestamp, body),
    }
