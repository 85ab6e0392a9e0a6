"""One backoff for every retry: doubling from a base, capped, then jittered below the cap."""

from __future__ import annotations

import random

# The jitter takes up to this fraction off each delay. Applied after the cap, so that
# retries that have all reached the cap still spread out instead of firing together.
JITTER_FRACTION = 0.25


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """The wait before retry number `attempt` (1 for the first): base_s * 2**(attempt - 1),
    at most `max_s`, less a random part of up to a quarter."""
    exponent = min(max(0, attempt - 1), 62)
    capped = min(max_s, base_s * float(2**exponent))
    return capped * random.uniform(1.0 - JITTER_FRACTION, 1.0)
