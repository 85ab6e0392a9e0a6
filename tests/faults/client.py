"""Clients creating scans over HTTP while faults happen, recording what each create was told.

Every create has its own domain and Idempotency-Key, so the database can be checked against
what each client saw. A create whose request may have reached the API but whose answer was lost
is "unknown": like a careful client, the driver later sends it again with the same key.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx

CREATE_PATH = "/api/v1/tasks"
REQUEST_TIMEOUT_S = 15.0
KEEPALIVE_S = 1.0


@dataclass
class CreateOutcome:
    """What one create was told. `status` is None when no answer came back."""

    index: int
    domain: str
    key: str
    status: int | None = None
    task_id: str | None = None
    error: str | None = None
    # False only when the request certainly never reached the API (the connection failed).
    maybe_sent: bool = True
    replay_status: int | None = None
    detail: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def unknown(self) -> bool:
        return self.status is None and self.maybe_sent


def body_of(outcome: CreateOutcome) -> dict[str, object]:
    return {"target_domain": outcome.domain}


async def send_create(http: httpx.AsyncClient, outcome: CreateOutcome) -> None:
    """One create; fills in `outcome` from the answer or from the way it failed."""
    headers = {"Idempotency-Key": outcome.key}
    try:
        response = await http.post(CREATE_PATH, json=body_of(outcome), headers=headers)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        outcome.error, outcome.maybe_sent = type(exc).__name__, False
        return
    except httpx.HTTPError as exc:
        outcome.error = type(exc).__name__
        outcome.detail = f"{exc!r} cause={exc.__cause__!r} at {time.time():.3f}"
        return
    outcome.status = response.status_code
    if outcome.accepted:
        outcome.task_id = response.json()["id"]
    else:
        outcome.error = response.text[:300]


@dataclass
class CreateDriver:
    """Sends `total` creates at about `rate_per_s`, at most `concurrency` at a time, from a
    thread of its own, so the test's thread is free to inject faults meanwhile."""

    api_url: str
    token: str
    total: int
    concurrency: int
    rate_per_s: float
    prefix: str = field(default_factory=lambda: f"f{uuid.uuid4().hex[:6]}")
    outcomes: list[CreateOutcome] = field(default_factory=list)
    done: int = 0
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.outcomes = [
            CreateOutcome(
                index=index,
                domain=f"{self.prefix}-{index}.example.com",
                key=f"{self.prefix}-{index}-{uuid.uuid4().hex[:8]}",
            )
            for index in range(self.total)
        ]

    def client(self) -> httpx.AsyncClient:
        # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout: reusing
        # one the server is closing at that very moment loses the request (a reset).
        limits = httpx.Limits(max_connections=self.concurrency, keepalive_expiry=KEEPALIVE_S)
        return httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=REQUEST_TIMEOUT_S,
            limits=limits,
        )

    def start(self) -> CreateDriver:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        return self

    def accepted_so_far(self) -> int:
        """Creates accepted, or all of them while some are still being sent."""
        if self.thread is not None and self.thread.is_alive():
            return self.total
        return sum(outcome.accepted for outcome in self.outcomes)

    def join(self, timeout_s: float) -> list[CreateOutcome]:
        assert self.thread is not None
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise AssertionError(f"creates still running after {timeout_s}s: {self.done} done")
        return self.outcomes

    async def _run(self) -> None:
        started = time.monotonic()
        pending = iter(self.outcomes)
        async with self.client() as http:

            async def one_client() -> None:
                for outcome in pending:
                    due = started + outcome.index / self.rate_per_s
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await send_create(http, outcome)
                    self.done += 1

            await asyncio.gather(*(one_client() for _ in range(self.concurrency)))

    def replay_unknown(self) -> list[CreateOutcome]:
        """Send every unknown create again with its key; returns those replayed."""
        unknown = [outcome for outcome in self.outcomes if outcome.unknown]

        async def replay() -> None:
            async with self.client() as http:
                for outcome in unknown:
                    headers = {"Idempotency-Key": outcome.key}
                    response = await http.post(CREATE_PATH, json=body_of(outcome), headers=headers)
                    outcome.replay_status = response.status_code
                    assert response.status_code in (200, 201), response.text
                    outcome.task_id = response.json()["id"]

        asyncio.run(replay())
        return unknown

    def tally(self) -> Counter[str]:
        """Outcomes by kind: the HTTP status, or the exception's name."""
        return Counter(
            str(o.status) if o.status is not None else str(o.error) for o in self.outcomes
        )
