"""When a failed callback is tried again: the configured schedule (Standard Webhooks'
example by default, about three days), or the receiver's `Retry-After` kept within bounds,
never after a `410 Gone`. Pure: no clock but the one passed in."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from shared.backoff import JITTER_FRACTION
from shared.settings import Settings

GONE = 410


@dataclass(frozen=True)
class RetryPolicy:
    schedule_s: tuple[float, ...]  # the wait after try 1, 2, …; the last one repeats
    max_attempts: int
    retry_after_min_s: float
    retry_after_max_s: float

    @classmethod
    def of(cls, settings: Settings) -> RetryPolicy:
        return cls(
            tuple(settings.callback_retry_schedule_s),
            settings.callback_max_attempts,
            settings.callback_retry_after_min_s,
            settings.callback_retry_after_max_s,
        )

    def retry_in_s(
        self, attempts: int, status: int | None, retry_after_s: float | None
    ) -> float | None:
        """The wait before the next try after `attempts` tries, the last answered `status`
        (None: no answer) with `retry_after_s` asked; None when there is no next try."""
        if status == GONE or attempts >= self.max_attempts:
            return None
        if retry_after_s is not None:
            return min(max(retry_after_s, self.retry_after_min_s), self.retry_after_max_s)
        scheduled = self.schedule_s[min(max(attempts, 1), len(self.schedule_s)) - 1]
        # Jitter below the wait, so retries of deliveries that failed together spread out.
        return scheduled * random.uniform(1.0 - JITTER_FRACTION, 1.0)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from `now` a `Retry-After` value asks for (delay-seconds or an HTTP-date;
    a date in the past is 0), or None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
