"""The relay's wake-up hints: outbox hints wake the relay, callback hints the deliverer.

Hints come through the broker's Redis after the writer's commit (shared/wakeups.py). They
are an accelerator only: the relay and the deliverer poll on their own intervals whether
or not hints arrive, so a relay with hints off, or cut from Redis, is late, never wrong.
"""

from __future__ import annotations

from collections.abc import Callable

from shared import wakeups
from shared.settings import Settings

# How the subscription shows in Redis's CLIENT LIST.
CLIENT_NAME = "scan-outbox-relay-hints"


def _waking(wake: Callable[[], None]) -> wakeups.Handler:
    def handle(_payload: str | None) -> None:
        wake()

    return handle


def build_listener(
    settings: Settings, wake_relay: Callable[[], None], wake_deliverer: Callable[[], None]
) -> wakeups.HintListener:
    """A listener calling `wake_relay` on each outbox hint and `wake_deliverer` on each
    callbacks hint, and both after every (re)subscription."""
    return wakeups.HintListener(
        settings,
        {wakeups.OUTBOX: _waking(wake_relay), wakeups.CALLBACKS: _waking(wake_deliverer)},
        settings.relay_listen_reconnect_max_s,
        CLIENT_NAME,
    )
