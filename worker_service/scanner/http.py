"""Fetching a domain's home page over one scheme without letting DNS steer the connection.

Every hop is resolved, passed through the SSRF guard, and then connected to by the checked IP
itself, with the name only in the Host header and TLS SNI; a DNS answer that changes after the
check therefore cannot move the connection. A URL without an explicit port uses the configured
port of its scheme (`http_port`, `https_port`), on the first hop and on redirects alike.
Each hop is bounded by `fetch_timeout_s` and by what is left of the scan's total budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.settings import Settings
from worker_service.scanner import failures, guard, page, resolver, tls
from worker_service.scanner.budget import Budget

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SECURITY_HEADERS = (
    "strict-transport-security",
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
)
REQUEST_HEADERS = {
    "User-Agent": "scan-outbox/0.1",
    "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5",
    # Only encodings page.read_capped can inflate within the body cap.
    "Accept-Encoding": "gzip, deflate",
}


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


@dataclass(slots=True)
class Hop:
    """One request of a redirect chain: its status, or why it got none."""

    url: str
    status: int | None
    elapsed_ms: int
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        hop: dict[str, Any] = {
            "url": self.url,
            "status": self.status,
            "elapsed_ms": self.elapsed_ms,
        }
        if self.error is not None:
            hop["error"] = self.error
        return hop


def security_headers(present: dict[str, str]) -> dict[str, Any]:
    return {
        "present": dict(present),
        "missing": [name for name in SECURITY_HEADERS if name not in present],
    }


@dataclass(slots=True)
class HomePage:
    """The page a fetch landed on; `text` feeds the rules and is not part of the JSON.

    `tls` describes the first HTTPS connection of the chain, if there was one.
    """

    url: str
    status: int
    elapsed_ms: int
    title: str | None
    body_bytes: int
    truncated: bool
    redirects: list[str]
    chain: list[Hop]
    headers: dict[str, str]
    tls: dict[str, Any] | None
    text: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "status": self.status,
            "elapsed_ms": self.elapsed_ms,
            "title": self.title,
            "body_bytes": self.body_bytes,
            "truncated": self.truncated,
            "redirects": list(self.redirects),
            "chain": [hop.to_json() for hop in self.chain],
            "security_headers": security_headers(self.headers),
            "tls": self.tls,
        }


@dataclass(slots=True)
class FetchFailure:
    """Why no page was fetched; `url` is where the chain stopped."""

    url: str
    error: str
    redirects: list[str] = field(default_factory=list)
    chain: list[Hop] = field(default_factory=list)
    tls: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "error": self.error,
            "redirects": list(self.redirects),
            "chain": [hop.to_json() for hop in self.chain],
            "tls": self.tls,
        }


class HopError(Exception):
    """One request of a redirect chain failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    location: httpx.URL | None = None
    body: page.Body | None = None
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    tls: dict[str, Any] | None = None


def default_port(scheme: str, settings: Settings) -> int:
    return settings.https_port if scheme == "https" else settings.http_port


def connect_candidates(addresses: list[str]) -> list[str]:
    """The first address of each family, in the given order.

    One try per family gets past a family the worker cannot reach without multiplying timeouts.
    """
    by_family: dict[bool, str] = {}
    for ip in addresses:
        by_family.setdefault(":" in ip, ip)
    return list(by_family.values())


def _redirect_target(response: httpx.Response, url: httpx.URL) -> httpx.URL | None:
    location = response.headers.get("location")
    if response.status_code not in REDIRECT_STATUSES or not location:
        return None
    try:
        target = url.join(location.strip())
    except httpx.InvalidURL as exc:
        raise HopError(f"invalid redirect location {location!r}") from exc
    if target.scheme not in ("http", "https") or not target.raw_host:
        raise HopError(f"redirect to unsupported URL {location!r}")
    return target.copy_with(fragment=None)


def _ssl_object(response: httpx.Response) -> ssl.SSLObject | None:
    stream = response.extensions.get("network_stream")
    found = stream.get_extra_info("ssl_object") if stream is not None else None
    return found if isinstance(found, ssl.SSLObject) else None


# eq=False: a live part, not a value: equal only to itself, and hashable.
@dataclass(eq=False)
class _Fetcher:
    """One fetch: its clients, the settings, the scan's budget and the lookups made so far.

    `insecure` is set only when untrusted certificates are to be described, not refused.
    """

    client: httpx.AsyncClient
    insecure: httpx.AsyncClient | None
    settings: Settings
    known: dict[str, resolver.Resolution]
    budget: Budget

    async def _addresses(self, host: str) -> list[str]:
        resolution = self.known.get(host)
        if resolution is None:
            lifetime_s = self.budget.cap(self.settings.dns_timeout_s)
            if lifetime_s <= 0:
                raise HopError(self.budget.exhausted_message)
            resolution = await resolver.resolve_host(host, self.settings, lifetime_s=lifetime_s)
            self.known[host] = resolution
        if not resolution.addresses:
            raise HopError(f"DNS lookup of {host} failed: {resolution.error or 'no address'}")
        try:
            return guard.allowed_addresses(
                resolution.addresses, allow_private=self.settings.allow_private
            )
        except guard.ForbiddenTarget as exc:
            raise HopError(exc.message) from exc

    async def _exchange(
        self, client: httpx.AsyncClient, url: httpx.URL, ip: str, *, trusted: bool
    ) -> _Reply:
        port = url.port or default_port(url.scheme, self.settings)
        # The name travels only in Host and SNI; the socket goes to the address just checked.
        request = client.build_request(
            "GET",
            httpx.URL(scheme=url.scheme, host=ip, port=port, raw_path=url.raw_path),
            headers={"Host": url.netloc.decode("ascii")},
            extensions=(
                {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
            ),
        )
        response = await client.send(request, stream=True)
        try:
            facts = tls.describe(_ssl_object(response), trusted=trusted)
            location = _redirect_target(response, url)
            if location is not None:
                return _Reply(response.status_code, location=location, tls=facts)
            return await self._read(response, facts)
        finally:
            await response.aclose()

    async def _read(self, response: httpx.Response, facts: dict[str, Any] | None) -> _Reply:
        try:
            body = await page.read_capped(response, self.settings.fetch_max_body_bytes)
        except (httpx.HTTPError, OSError) as exc:
            raise HopError(failures.describe_error(exc, self.settings.fetch_timeout_s)) from exc
        headers = {
            name: value
            for name in SECURITY_HEADERS
            if (value := response.headers.get(name)) is not None
        }
        return _Reply(
            response.status_code,
            body=body,
            text=page.decode_text(body, response),
            headers=headers,
            tls=facts,
        )

    async def _attempt(self, url: httpx.URL, ip: str) -> _Reply:
        """A verified exchange; if the certificate fails verification and untrusted ones are
        to be described, the same exchange unverified, its TLS facts saying why."""
        try:
            return await self._exchange(self.client, url, ip, trusted=True)
        except httpx.ConnectError as exc:
            problem = failures.certificate_error(exc)
            if problem is None or self.insecure is None:
                raise
        reply = await self._exchange(self.insecure, url, ip, trusted=False)
        facts = {**(reply.tls or {}), "verify_error": problem}
        return dataclasses.replace(reply, tls=facts)

    def _reason(self, exc: BaseException, timeout_s: float) -> str:
        if timeout_s < self.settings.fetch_timeout_s and failures.is_timeout(exc):
            return self.budget.exhausted_message
        return failures.describe_error(exc, timeout_s)

    async def hop(self, url: httpx.URL) -> _Reply:
        """The reply to one GET of `url`; HopError if it cannot be had."""
        addresses = await self._addresses(url.raw_host.decode("ascii"))
        reason = "no address to connect to"
        for ip in connect_candidates(addresses):
            timeout_s = self.budget.cap(self.settings.fetch_timeout_s)
            if timeout_s <= 0:
                raise HopError(self.budget.exhausted_message)
            try:
                async with asyncio.timeout(timeout_s):
                    return await self._attempt(url, ip)
            except httpx.ConnectError as exc:
                reason = self._reason(exc, timeout_s)
            except (httpx.HTTPError, OSError) as exc:
                raise HopError(self._reason(exc, timeout_s)) from exc
        raise HopError(reason)

    async def chain(self, start: httpx.URL) -> HomePage | FetchFailure:
        """Follow redirects from `start` up to the configured limit and read the final page."""
        started = time.monotonic()
        url = start
        redirects: list[str] = []
        hops: list[Hop] = []
        facts: dict[str, Any] | None = None
        while True:
            hop_started = time.monotonic()
            try:
                reply = await self.hop(url)
            except HopError as exc:
                hops.append(Hop(str(url), None, _ms_since(hop_started), exc.reason))
                return FetchFailure(str(url), exc.reason, redirects, hops, facts)
            hops.append(Hop(str(url), reply.status, _ms_since(hop_started)))
            facts = facts or reply.tls
            if reply.location is None:
                return _home_page(url, reply, redirects, hops, facts, started)
            if len(redirects) >= self.settings.max_redirects:
                reason = f"too many redirects (limit {self.settings.max_redirects})"
                return FetchFailure(str(url), reason, redirects, hops, facts)
            url = reply.location
            redirects.append(str(url))


def _home_page(
    url: httpx.URL,
    reply: _Reply,
    redirects: list[str],
    hops: list[Hop],
    facts: dict[str, Any] | None,
    started: float,
) -> HomePage:
    body = reply.body or page.Body(b"", truncated=False)
    return HomePage(
        url=str(url),
        status=reply.status,
        elapsed_ms=_ms_since(started),
        title=page.extract_title(reply.text),
        body_bytes=len(body.content),
        truncated=body.truncated,
        redirects=redirects,
        chain=hops,
        headers=reply.headers,
        tls=facts,
        text=reply.text,
    )


def _client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None, verify: ssl.SSLContext
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        headers=REQUEST_HEADERS,
        timeout=settings.fetch_timeout_s,
        follow_redirects=False,
        verify=verify,
        # Proxies from the environment would connect by name and undo the guard.
        trust_env=False,
        # Pooled connections are keyed by IP and port; reusing one would carry the TLS session
        # of one name into a request for another name on the same address.
        limits=httpx.Limits(max_keepalive_connections=0),
        transport=transport,
    )


async def fetch(
    domain: str,
    scheme: str,
    settings: Settings,
    *,
    known: resolver.Resolution | None = None,
    budget: Budget | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> HomePage | FetchFailure:
    """The home page of `domain` over `scheme`, redirects followed hop by hop; never raises for
    problems of the target. `known` is a resolution of `domain` already made by the caller."""
    cache = {domain: known} if known is not None else {}
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            _client(settings, transport, tls.verifying_context(settings))
        )
        insecure = None
        if settings.tls_accept_untrusted:
            insecure = await stack.enter_async_context(
                _client(settings, transport, tls.unverified_context())
            )
        budget = budget or Budget.start(settings.total_timeout_s)
        fetcher = _Fetcher(client, insecure, settings, cache, budget)
        return await fetcher.chain(httpx.URL(f"{scheme}://{domain}/"))
