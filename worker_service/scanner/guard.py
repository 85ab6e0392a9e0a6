"""The scanner's SSRF guard: `shared.ssrf`, which completion callbacks use too."""

from __future__ import annotations

from shared.ssrf import (
    ForbiddenTarget,
    allowed_addresses,
    forbidden_reason,
    is_cloud_metadata,
    is_forbidden_address,
)

__all__ = [
    "ForbiddenTarget",
    "allowed_addresses",
    "forbidden_reason",
    "is_cloud_metadata",
    "is_forbidden_address",
]
