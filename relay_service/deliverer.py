"""Completion callbacks: lease due deliveries, POST them signed, record each outcome.

At least once: a delivery is leased (not locked) for longer than its POST can take, so a
relay that dies mid-POST leaves it due again. Every relay delivers, claiming with SKIP
LOCKED. Redirects are never followed; every address is checked by the SSRF guard and the
socket goes to the very address checked (the name travels in Host and SNI only).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import backoff, callback_urls, metrics, signing, ssrf
from shared.db import callbacks
from shared.db.engine import autocommit
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# A POST is abandoned after callback_timeout_s; the lease adds room for DNS and the commit.
LEASE_MARGIN_S = 30.0
DB_RETRY_MAX_S = 10.0
# The gauges count the table; as often as the relay leader's outbox gauges.
GAUGES_INTERVAL_S = 5.0
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class Outcome:
    status: int | None
    error: str | None
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def label(self) -> str:
        if self.status is not None:
            return str(self.status)
        return "refused" if self.permanent else (self.error or "error").split(":")[0]


class Refused(Exception):
    """The delivery may never be sent as it stands (guard, URL, no secret)."""


async def resolve(host: str, settings: Settings) -> list[str]:
    """Addresses of `host` the SSRF guard allows, or Refused."""
    try:
        return await callback_urls.allowed_addresses(host, settings)
    except ssrf.ForbiddenTarget as exc:
        raise Refused(exc.message) from exc


def _pinned_url(url: str, ip: str) -> tuple[httpx.URL, str]:
    """The URL aimed at `ip`, and the host name for Host and SNI."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return httpx.URL(url).copy_with(host=ip), host


class Deliverer:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.transport = transport
        self._woken = asyncio.Event()
        self._gauges_due = 0.0
        self._prune_due = 0.0
        verify = ssl.create_default_context(cafile=settings.tls_ca_bundle)
        self._verify = verify

    def wake(self) -> None:
        self._woken.set()

    def _check(self, claimed: callbacks.ClaimedDelivery) -> None:
        scheme = urlsplit(claimed.url).scheme
        if scheme != "https" and not (scheme == "http" and self.settings.callback_allow_http):
            raise Refused(f"{scheme} callbacks are not allowed")
        if not claimed.secrets:
            raise Refused("the user has no callback signing secret")

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self.settings.callback_timeout_s,
            follow_redirects=False,
            # Proxies from the environment would connect by name and undo the guard.
            trust_env=False,
            verify=self._verify,
            # Connections are made to pinned addresses; reusing one could carry one
            # name's TLS session into a request for another name on that address.
            limits=httpx.Limits(max_keepalive_connections=0),
            transport=self.transport,
        )

    async def _post(self, client: httpx.AsyncClient, claimed: callbacks.ClaimedDelivery) -> Outcome:
        self._check(claimed)
        url, host = _pinned_url(claimed.url, (await resolve(_host(claimed.url), self.settings))[0])
        body = json.dumps(claimed.payload, sort_keys=True, separators=(",", ":")).encode()
        event = str(claimed.payload.get("event", ""))
        headers = signing.headers(
            str(claimed.delivery_id), event, claimed.secrets, int(time.time()), body
        )
        headers["Host"] = f"{host}:{url.port}" if url.port else host
        response = await client.post(
            url, content=body, headers=headers, extensions={"sni_hostname": host}
        )
        if 300 <= response.status_code < 400:
            return Outcome(response.status_code, f"HTTP {response.status_code}: not followed")
        if not 200 <= response.status_code < 300:
            return Outcome(response.status_code, f"HTTP {response.status_code}")
        return Outcome(response.status_code, None)

    async def send(self, client: httpx.AsyncClient, claimed: callbacks.ClaimedDelivery) -> Outcome:
        """One try; never raises for what the receiver or the network did."""
        try:
            return await asyncio.wait_for(
                self._post(client, claimed), self.settings.callback_timeout_s
            )
        except Refused as exc:
            return Outcome(None, f"refused: {exc}", permanent=True)
        except (httpx.InvalidURL, ValueError) as exc:
            # A URL that cannot be called (vetted at submit, but rows can be written by hand).
            return Outcome(None, f"refused: invalid URL ({exc})", permanent=True)
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(None, "timeout: no answer in time")
        except (httpx.HTTPError, OSError) as exc:
            return Outcome(None, f"connection: {type(exc).__name__}")

    def _retry_in_s(self, claimed: callbacks.ClaimedDelivery, outcome: Outcome) -> float | None:
        if outcome.permanent or claimed.attempts >= self.settings.callback_max_attempts:
            return None
        base_s, max_s = self.settings.callback_backoff_base_s, self.settings.callback_backoff_max_s
        return backoff.backoff_s(claimed.attempts, base_s, max_s)

    async def _claim(self, limit: int) -> list[callbacks.ClaimedDelivery]:
        lease_s = self.settings.callback_timeout_s + LEASE_MARGIN_S
        async with self.sessionmaker() as session, session.begin():
            return await callbacks.claim_due(session, limit, lease_s)

    async def _deliver(self, client: httpx.AsyncClient, item: callbacks.ClaimedDelivery) -> None:
        """Send one delivery and record its outcome in one statement of its own. If the
        record fails, the lease runs out and it is sent again: at least once."""
        outcome = await self.send(client, item)
        try:
            async with self.sessionmaker() as session:
                # One UPDATE, atomic by itself: no BEGIN and COMMIT round trips.
                await autocommit(session)
                if outcome.ok:
                    await callbacks.mark_delivered(session, [(item.id, outcome.status or 0)])
                else:
                    await self._record_failure(session, item, outcome)
        except (DBAPIError, OSError) as exc:
            log.warning("callback_record_failed", error=type(exc).__name__)
            return
        if outcome.ok:
            metrics.CALLBACKS_DELIVERED.inc()
            log.info(
                "callback_delivered",
                status=outcome.status,
                delivery_id=str(item.delivery_id),
                attempt=item.attempts,
            )

    async def _housekeeping(self) -> None:
        if time.monotonic() >= self._gauges_due:
            await self._refresh_gauges()
        if time.monotonic() >= self._prune_due:
            await self.prune()

    async def cycle(self) -> int:
        """Claim one batch, send it and record every outcome; the number claimed."""
        claimed = await self._claim(self.settings.callback_batch_size)
        if claimed:
            async with self._client() as client:
                await asyncio.gather(*(self._deliver(client, item) for item in claimed))
        await self._housekeeping()
        return len(claimed)

    async def prune(self) -> int:
        """Delivered rows past the outbox's retention go, a batch per short transaction
        (SKIP LOCKED, so relays pruning at once never wait on each other)."""
        self._prune_due = time.monotonic() + self.settings.relay_prune_interval_s
        total = 0
        while True:
            async with self.sessionmaker() as session, session.begin():
                pruned = await callbacks.prune_delivered(
                    session, self.settings.outbox_retention_s, self.settings.relay_prune_batch_size
                )
            total += pruned
            if pruned < self.settings.relay_prune_batch_size:
                return total

    async def _refresh_gauges(self) -> None:
        async with self.sessionmaker() as session:
            summary = await callbacks.summarize(session)
        metrics.CALLBACKS_PENDING.set(summary.pending)
        metrics.CALLBACKS_OLDEST_AGE.set(summary.oldest_pending_age_s)
        metrics.CALLBACKS_DEAD.set(summary.dead)
        self._gauges_due = time.monotonic() + GAUGES_INTERVAL_S

    async def _record_failure(
        self, session: AsyncSession, item: callbacks.ClaimedDelivery, outcome: Outcome
    ) -> None:
        retry_in_s = self._retry_in_s(item, outcome)
        error = (outcome.error or "failed")[:MAX_ERROR_CHARS]
        await callbacks.record_failure(session, item.id, outcome.status, error, retry_in_s)
        metrics.CALLBACK_FAILURES.labels(status=outcome.label).inc()
        log.warning(
            "callback_dead" if retry_in_s is None else "callback_failed",
            status=outcome.status,
            error=error,
            retry_in_s=retry_in_s,
            delivery_id=str(item.delivery_id),
            attempt=item.attempts,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop`, keeping up to `callback_batch_size` POSTs in flight: a
        free slot is filled as soon as one ends, so a slow receiver holds one slot, not a
        batch. Claims again on a NOTIFY, a finished POST or the poll interval; a lost
        database is retried with backoff."""
        in_flight: set[asyncio.Task[None]] = set()
        failures = 0
        async with self._client() as client:
            while not stop.is_set():
                self._woken.clear()
                try:
                    free = self.settings.callback_batch_size - len(in_flight)
                    # Slots are refilled a few at a time: one claim per ended POST would
                    # cost a transaction per delivery.
                    if in_flight and free < max(1, self.settings.callback_batch_size // 4):
                        free = 0
                    for item in await self._claim(free) if free > 0 else []:
                        in_flight.add(asyncio.create_task(self._deliver(client, item)))
                    await self._housekeeping()
                    failures = 0
                except (DBAPIError, OSError) as exc:
                    failures += 1
                    log.warning("callbacks_cycle_failed", error=type(exc).__name__)
                pause_s = self.settings.callback_poll_interval_s
                if failures:
                    pause_s = backoff.backoff_s(failures, pause_s, DB_RETRY_MAX_S)
                await _first_of(stop, self._woken, in_flight, pause_s)
                in_flight = {task for task in in_flight if not task.done()}
            # Each POST ends within callback_timeout_s; the relay's shutdown grace is longer.
            await asyncio.gather(*in_flight, return_exceptions=True)


def _host(url: str) -> str:
    host = urlsplit(url).hostname
    if not host:
        raise Refused("the URL names no host")
    return host


async def _first_of(
    stop: asyncio.Event, woken: asyncio.Event, in_flight: set[asyncio.Task[None]], timeout_s: float
) -> None:
    """Until `stop` or `woken` is set, a delivery in flight ends, or `timeout_s` passes."""
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(woken.wait())]
    try:
        await asyncio.wait(
            [*waits, *in_flight], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for wait in waits:
            wait.cancel()
