"""How many messages each client's lane may have in the broker: enough to keep the workers
busy, never more than a short spell of work ahead of another client's next message."""

from __future__ import annotations

import collections
import time

from shared.settings import Settings

# The span the publish rate is measured over.
RATE_SPAN_S = 1.0
# Looks at full windows in a row that may find no room before the relay looks less often:
# half a window of SCAN_RELAY_WINDOW_S / 2 seconds' work, at 20 ms a look.
PATIENT_LOOKS = 8


class PublishRate:
    """Messages this relay published over the last `RATE_SPAN_S`, per second."""

    def __init__(self) -> None:
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._total = 0

    def record(self, count: int, now: float | None = None) -> None:
        if count:
            self._recent.append((time.monotonic() if now is None else now, count))
            self._total += count

    def per_s(self, now: float | None = None) -> float:
        horizon = (time.monotonic() if now is None else now) - RATE_SPAN_S
        while self._recent and self._recent[0][0] < horizon:
            self._total -= self._recent.popleft()[1]
        return self._total / RATE_SPAN_S


def window_size(rate_per_s: float, client_lanes: int, settings: Settings) -> int:
    """Each lane's share of `relay_window_s` of work at the rate the workers take messages,
    within [relay_client_window, relay_client_window_max]: a newcomer's message waits behind
    about that much work whatever the number of clients, and a lone client's window grows
    with its workers' pace."""
    share = rate_per_s * settings.relay_window_s / max(client_lanes, 1)
    return max(settings.relay_client_window, min(settings.relay_client_window_max, int(share)))


def recheck_s(window_full: bool, fruitless_looks: int, settings: Settings) -> float | None:
    """When to look again for room in full windows (None: only when woken). After
    `PATIENT_LOOKS` looks in a row that found none (half a window takes a while to empty),
    each doubles the wait, up to the poll interval: workers that stopped taking messages
    cost a look a second, not fifty."""
    if not window_full:
        return None
    base_s = settings.relay_window_poll_s
    wait_s = base_s * 2.0 ** min(max(fruitless_looks - PATIENT_LOOKS, 0), 16)
    return min(wait_s, max(base_s, settings.relay_poll_interval_s))
