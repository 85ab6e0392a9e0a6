"""Completion callbacks: lease due deliveries, POST them signed, record each outcome.

The rows are written by the trigger `task_finished_callbacks` (revision 0005; docs/design.md,
"Completion callbacks") in the transaction that ends a task, whichever statement ends it.

At least once: a delivery is leased (not locked) for longer than its POST can take, so a
relay that dies mid-POST leaves it due again. Every relay delivers, claiming with SKIP
LOCKED. Redirects are never followed; every address is checked by the SSRF guard and the
socket goes to the very address checked (the name travels in Host and SNI only).
One relay keeps at most `callback_per_user_in_flight` POSTs in flight for a user and
`callback_per_host_in_flight` to a receiver host, so a stalled receiver holds only its own
share; host names are looked up on the event loop (`shared.host_lookup`), never in the
default executor; a response is read raw, at most MAX_RESPONSE_BYTES, never decompressed.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay_service import callback_retries
from shared import backoff, callback_addresses, host_lookup, metrics, signing, ssrf
from shared.db import callbacks, deliveries
from shared.db.engine import single_statement
from shared.event_waits import first_of
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# A POST is abandoned after callback_timeout_s; the lease adds room for DNS and the commit.
LEASE_MARGIN_S = 30.0
DB_RETRY_MAX_S = 10.0
MAX_ERROR_CHARS = 300
# The outcome is the status line; of the body only this much is read (so a small answer
# ends cleanly), raw: a compressed body is never inflated, whatever it claims to be.
MAX_RESPONSE_BYTES = 4096


@dataclass(frozen=True)
class Outcome:
    status: int | None
    error: str | None
    permanent: bool = False
    retry_after_s: float | None = None  # what the receiver's Retry-After asked for

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
    """Addresses of `host` the SSRF guard allows, or Refused; LookupFailed if none in time."""
    try:
        return await callback_addresses.allowed_addresses(host, settings, settings.dns_timeout_s)
    except ssrf.ForbiddenTarget as exc:
        raise Refused(exc.message) from exc


def _pinned_url(url: str, ip: str) -> httpx.URL:
    """The URL aimed at `ip` (the name travels in Host and SNI only)."""
    return httpx.URL(url).copy_with(host=ip)


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
        self._retries = callback_retries.RetryPolicy.of(settings)
        self._woken = asyncio.Event()
        # POSTs in flight by user and by receiver host (the claim's key), this relay only.
        self._users: Counter[int] = Counter()
        self._hosts: Counter[str] = Counter()
        # Whether a user or host was at its bound when the last claim ran (its own rows
        # counted): only then can an ended POST make room for rows that claim skipped.
        self._bound_reached = False
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

    def http_client(self) -> httpx.AsyncClient:
        """The client POSTs go through: no redirects, no proxies, no reused connections."""
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
        host = callback_addresses.ascii_host(_host(claimed.url))
        url = _pinned_url(claimed.url, (await resolve(host, self.settings))[0])
        body = json.dumps(claimed.payload, sort_keys=True, separators=(",", ":")).encode()
        event = str(claimed.payload.get("event", ""))
        headers = signing.headers(
            str(claimed.delivery_id), event, claimed.secrets, int(time.time()), body
        )
        headers["Host"] = callback_addresses.host_header(host, url.port)
        headers["Accept-Encoding"] = "identity"
        # An IP literal is never sent as SNI (RFC 6066); the certificate names the address.
        sni = {} if ssrf.is_ip(host) else {"sni_hostname": host}
        request = client.build_request("POST", url, content=body, headers=headers, extensions=sni)
        response = await client.send(request, stream=True)
        try:
            await _skim(response)
        finally:
            await response.aclose()
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(status, None)
        asked = callback_retries.parse_retry_after(
            response.headers.get("retry-after"), datetime.now(UTC)
        )
        if status == callback_retries.GONE:
            return Outcome(status, f"HTTP {status}: the receiver is gone, not tried again")
        if 300 <= status < 400:
            return Outcome(status, f"HTTP {status}: not followed", retry_after_s=asked)
        return Outcome(status, f"HTTP {status}", retry_after_s=asked)

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
        except host_lookup.LookupFailed as exc:
            return Outcome(None, f"dns: {exc}")
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(None, "timeout: no answer in time")
        except (httpx.HTTPError, OSError) as exc:
            return Outcome(None, f"connection: {type(exc).__name__}")
        except Exception as exc:  # one bad delivery must not stop the relay
            log.exception("callback_send_error", delivery_id=str(claimed.delivery_id))
            return Outcome(None, f"error: {type(exc).__name__}")

    def _retry_in_s(self, claimed: callbacks.ClaimedDelivery, outcome: Outcome) -> float | None:
        if outcome.permanent:
            return None
        return self._retries.retry_in_s(claimed.attempts, outcome.status, outcome.retry_after_s)

    async def _claim(self, limit: int) -> list[callbacks.ClaimedDelivery]:
        """Lease up to `limit` deliveries within the per-user and per-host bounds, counting
        them in flight until `_deliver` ends."""
        settings = self.settings
        lease_s = settings.callback_timeout_s + LEASE_MARGIN_S
        in_flight = callbacks.InFlight(
            settings.callback_per_user_in_flight,
            settings.callback_per_host_in_flight,
            dict(self._users),
            dict(self._hosts),
        )
        # One statement, atomic by itself: no BEGIN and COMMIT round trips on the way from a
        # wake-up to its POST (a short transaction behind a transaction pooler).
        async with self.sessionmaker() as session, single_statement(session):
            claimed = await callbacks.claim_due(
                session, limit, lease_s, settings.callback_max_attempts, in_flight
            )
        for item in claimed:
            self._users[item.user_id] += 1
            self._hosts[item.host] += 1
        # Judged by the counts the claim saw, not the counters now: POSTs that ended while it
        # ran made room it could not use, and the loop must come back for it at once.
        users = Counter(in_flight.users) + Counter(item.user_id for item in claimed)
        hosts = Counter(in_flight.hosts) + Counter(item.host for item in claimed)
        self._bound_reached = any(n >= in_flight.per_user for n in users.values()) or any(
            n >= in_flight.per_host for n in hosts.values()
        )
        return claimed

    def _release(self, item: callbacks.ClaimedDelivery) -> None:
        self._users[item.user_id] -= 1
        self._hosts[item.host] -= 1
        # Counter keeps zero counts; the claim is sent only the keys still in flight.
        self._users += Counter()
        self._hosts += Counter()

    async def _deliver(self, client: httpx.AsyncClient, item: callbacks.ClaimedDelivery) -> None:
        """Send one delivery and record its outcome; never raises. If the record fails, the
        lease runs out and it is sent again: at least once."""
        try:
            await self._deliver_once(client, item)
        except Exception:  # a relay outlives any one delivery
            log.exception("callback_delivery_error", delivery_id=str(item.delivery_id))
        finally:
            self._release(item)

    async def _deliver_once(
        self, client: httpx.AsyncClient, item: callbacks.ClaimedDelivery
    ) -> None:
        started_at, started = datetime.now(UTC), time.perf_counter()
        outcome = await self.send(client, item)
        attempt = deliveries.Attempt(
            row_id=item.id,
            started_at=started_at,
            duration_ms=round((time.perf_counter() - started) * 1000),
            status=outcome.status,
            error=None if outcome.ok else (outcome.error or "failed")[:MAX_ERROR_CHARS],
            retry_in_s=None if outcome.ok else self._retry_in_s(item, outcome),
        )
        try:
            # One statement: no BEGIN and COMMIT round trips (a short transaction behind a
            # transaction pooler).
            async with self.sessionmaker() as session, single_statement(session):
                await deliveries.record_attempt(session, attempt)
        except (DBAPIError, OSError) as exc:
            log.warning("callback_record_failed", error=type(exc).__name__)
            return
        self._report(item, outcome, attempt)

    def _report(
        self, item: callbacks.ClaimedDelivery, outcome: Outcome, attempt: deliveries.Attempt
    ) -> None:
        ids = {"delivery_id": str(item.delivery_id), "attempt": item.attempts}
        if outcome.ok:
            metrics.CALLBACKS_DELIVERED.inc()
            log.info("callback_delivered", status=outcome.status, **ids)
            return
        metrics.CALLBACK_FAILURES.labels(status=outcome.label).inc()
        event = {"failed": "callback_failed", "gone": "callback_gone"}.get(
            attempt.outcome, "callback_dead"
        )
        log.warning(
            event, status=outcome.status, error=attempt.error, retry_in_s=attempt.retry_in_s, **ids
        )

    async def bury_exhausted(self) -> int:
        """Due deliveries with every try spent become dead (a relay stopped inside their
        last try): the claim never leases them again. The number buried."""
        async with self.sessionmaker() as session, session.begin():
            buried = await callbacks.bury_exhausted(session, self.settings.callback_max_attempts)
        for delivery_id, attempts in buried:
            log.warning(
                "callback_dead",
                error="out of attempts",
                delivery_id=str(delivery_id),
                attempt=attempts,
            )
        return len(buried)

    async def prune(self) -> int:
        """Delivered rows past the outbox's retention go, a batch per short transaction
        (SKIP LOCKED, so relays pruning at once never wait on each other)."""
        total = 0
        while True:
            async with self.sessionmaker() as session, session.begin():
                pruned = await callbacks.prune_delivered(
                    session, self.settings.outbox_retention_s, self.settings.relay_prune_batch_size
                )
            total += pruned
            if pruned < self.settings.relay_prune_batch_size:
                return total

    async def refresh_gauges(self) -> None:
        """Set the callbacks gauges from the table (the same on every relay)."""
        async with self.sessionmaker() as session:
            summary = await callbacks.summarize(session)
        metrics.CALLBACKS_PENDING.set(summary.pending)
        metrics.CALLBACKS_OLDEST_AGE.set(summary.oldest_pending_age_s)
        metrics.CALLBACKS_DEAD.set(summary.dead)

    def _free_slots(self, in_flight: int) -> int:
        free = self.settings.callback_batch_size - in_flight
        # Slots are refilled a few at a time: one claim per ended POST would cost a
        # transaction per delivery.
        if in_flight and free < max(1, self.settings.callback_batch_size // 4):
            return 0
        return free

    def _limited(self, free: int, claimed: int) -> bool:
        """Whether free slots or a user's or host's bound, not the lack of due rows, kept
        the last claim from taking more: only then can an ended POST make room for more."""
        return claimed >= free or (free > 0 and self._bound_reached)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop`, keeping up to `callback_batch_size` POSTs in flight: a
        free slot is filled as soon as one ends, so a slow receiver holds one slot, not a
        batch. Claims on a hint (`wake`), at the poll interval, and, when slots or bounds
        held the last claim back, as a POST ends or at once. Burying, pruning and gauges are
        jobs of the relay's registry (`relay_service.scheduler`), never between a hint and
        its claim. Any error is logged and retried with backoff."""
        in_flight: set[asyncio.Task[None]] = set()
        failures = 0
        async with self.http_client() as client:
            while not stop.is_set():
                self._woken.clear()
                free = claimed = 0
                try:
                    free = self._free_slots(len(in_flight))
                    started = await self.start_due(client, free)
                    in_flight.update(started)
                    claimed = len(started)
                    failures = 0
                except Exception as exc:  # the loop outlives any error
                    failures += 1
                    log.warning("callbacks_cycle_failed", error=type(exc).__name__)
                pause_s = self.settings.callback_poll_interval_s
                limited = self._limited(free, claimed)
                if failures:
                    pause_s = backoff.backoff_s(failures, pause_s, DB_RETRY_MAX_S)
                elif claimed and limited and self._free_slots(len(in_flight)):
                    # Users and hosts that reached their bound in that claim are skipped
                    # by the next one, which may find other clients' rows behind theirs.
                    pause_s = 0.0
                # An ended POST wakes the loop only if room was what it lacked: otherwise
                # each POST would cost a claim that finds nothing, and at a few hundred
                # callbacks a second those claims delay the ones that matter.
                await first_of(
                    stop, self._woken, tasks=in_flight if limited else (), timeout_s=pause_s
                )
                in_flight = {task for task in in_flight if not task.done()}
            # Each POST ends within callback_timeout_s; the relay's shutdown grace is longer.
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def start_due(self, client: httpx.AsyncClient, free: int) -> list[asyncio.Task[None]]:
        """Lease up to `free` due deliveries and start their POSTs through `client`: one
        task each, which records the outcome and never raises."""
        if free <= 0:
            return []
        return [
            asyncio.create_task(self._deliver(client, item)) for item in await self._claim(free)
        ]


async def _skim(response: httpx.Response) -> None:
    """Read at most MAX_RESPONSE_BYTES of the body as sent (no decoding), then stop."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read >= MAX_RESPONSE_BYTES:
            return


def _host(url: str) -> str:
    host = urlsplit(url).hostname
    if not host:
        raise Refused("the URL names no host")
    return host
