"""Fetching a domain's home page without letting DNS steer the connection.

Every hop is resolved, passed through the SSRF guard, and then connected to by the checked IP
itself, with the name only in the Host header and TLS SNI; a DNS answer that changes after the
check therefore cannot move the connection. A URL without an explicit port uses the configured
port of its scheme (`http_port`, `https_port`), on the first hop and on redirects alike.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.settings import Settings
from worker_service.scanner import guard, page, resolver

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


@dataclass(slots=True)
class HomePage:
    """The page a scan landed on; `text` feeds the rules and is not part of the JSON."""

    url: str
    status: int
    elapsed_ms: int
    title: str | None
    body_bytes: int
    truncated: bool
    redirects: list[str]
    headers: dict[str, str]
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
            "headers": dict(self.headers),
        }


@dataclass(slots=True)
class FetchFailure:
    """Why no page was fetched; `attempts` has one entry per scheme that was tried."""

    error: str
    redirects: list[str] = field(default_factory=list)
    attempts: list[dict[str, str]] = field(default_factory=list)
    responded: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "redirects": list(self.redirects),
            "attempts": [dict(attempt) for attempt in self.attempts],
        }


class HopError(Exception):
    """One request of a redirect chain failed; `responded` if the target had answered."""

    def __init__(self, reason: str, *, responded: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.responded = responded


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    location: httpx.URL | None = None
    body: page.Body | None = None
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe_error(exc: BaseException, timeout_s: float) -> str:
    """A short, stable reason for a failed request, naming TLS, refusal and timeouts plainly."""
    for cause in _causes(exc):
        if isinstance(cause, httpx.TimeoutException | TimeoutError):
            return f"timeout after {timeout_s:g}s"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate error: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or cause}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {exc}"
    if isinstance(exc, httpx.ProtocolError):
        return f"protocol error: {exc}"
    return f"request failed: {exc or type(exc).__name__}"


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
        raise HopError(f"invalid redirect location {location!r}", responded=True) from exc
    if target.scheme not in ("http", "https") or not target.raw_host:
        raise HopError(f"redirect to unsupported URL {location!r}", responded=True)
    return target.copy_with(fragment=None)


class _Fetcher:
    """One home-page fetch: a client, the settings, and the lookups made so far."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        known: dict[str, resolver.Resolution],
    ) -> None:
        self.client = client
        self.settings = settings
        self.known = known

    async def _addresses(self, host: str) -> list[str]:
        resolution = self.known.get(host)
        if resolution is None:
            resolution = await resolver.resolve_host(host, self.settings)
            self.known[host] = resolution
        if not resolution.addresses:
            raise HopError(f"DNS lookup of {host} failed: {resolution.error or 'no address'}")
        try:
            return guard.allowed_addresses(
                resolution.addresses, allow_private=self.settings.allow_private
            )
        except guard.ForbiddenTarget as exc:
            raise HopError(exc.message) from exc

    async def _exchange(self, url: httpx.URL, ip: str) -> _Reply:
        port = url.port or default_port(url.scheme, self.settings)
        # The name travels only in Host and SNI; the socket goes to the address just checked.
        request = self.client.build_request(
            "GET",
            httpx.URL(scheme=url.scheme, host=ip, port=port, raw_path=url.raw_path),
            headers={"Host": url.netloc.decode("ascii")},
            extensions=(
                {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
            ),
        )
        response = await self.client.send(request, stream=True)
        try:
            location = _redirect_target(response, url)
            if location is not None:
                return _Reply(response.status_code, location=location)
            return await self._read(response)
        finally:
            await response.aclose()

    async def _read(self, response: httpx.Response) -> _Reply:
        try:
            body = await page.read_capped(response, self.settings.fetch_max_body_bytes)
        except (httpx.HTTPError, OSError) as exc:
            reason = describe_error(exc, self.settings.fetch_timeout_s)
            raise HopError(reason, responded=True) from exc
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
        )

    async def hop(self, url: httpx.URL) -> _Reply:
        """The reply to one GET of `url`; HopError if it cannot be had."""
        addresses = await self._addresses(url.raw_host.decode("ascii"))
        reason = "no address to connect to"
        for ip in connect_candidates(addresses):
            try:
                async with asyncio.timeout(self.settings.fetch_timeout_s):
                    return await self._exchange(url, ip)
            except httpx.ConnectError as exc:
                reason = describe_error(exc, self.settings.fetch_timeout_s)
            except (httpx.HTTPError, OSError, TimeoutError) as exc:
                raise HopError(describe_error(exc, self.settings.fetch_timeout_s)) from exc
        raise HopError(reason)

    async def chain(self, start: httpx.URL) -> HomePage | FetchFailure:
        """Follow redirects from `start` up to the configured limit and read the final page."""
        started = time.monotonic()
        url = start
        redirects: list[str] = []
        while True:
            try:
                reply = await self.hop(url)
            except HopError as exc:
                attempt = {"url": str(url), "error": exc.reason}
                return FetchFailure(
                    exc.reason, redirects, [attempt], responded=exc.responded or bool(redirects)
                )
            if reply.location is None:
                return _home_page(url, reply, redirects, started)
            if len(redirects) >= self.settings.max_redirects:
                reason = f"too many redirects (limit {self.settings.max_redirects})"
                attempt = {"url": str(url), "error": reason}
                return FetchFailure(reason, redirects, [attempt], responded=True)
            url = reply.location
            redirects.append(str(url))


def _home_page(url: httpx.URL, reply: _Reply, redirects: list[str], started: float) -> HomePage:
    body = reply.body or page.Body(b"", truncated=False)
    return HomePage(
        url=str(url),
        status=reply.status,
        elapsed_ms=int((time.monotonic() - started) * 1000),
        title=page.extract_title(reply.text),
        body_bytes=len(body.content),
        truncated=body.truncated,
        redirects=redirects,
        headers=reply.headers,
        text=reply.text,
    )


def _client(settings: Settings, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        headers=REQUEST_HEADERS,
        timeout=settings.fetch_timeout_s,
        follow_redirects=False,
        # Proxies from the environment would connect by name and undo the guard.
        trust_env=False,
        # Pooled connections are keyed by IP and port; reusing one would carry the TLS session
        # of one name into a request for another name on the same address.
        limits=httpx.Limits(max_keepalive_connections=0),
        transport=transport,
    )


async def fetch_home_page(
    domain: str,
    settings: Settings,
    *,
    known: resolver.Resolution | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> HomePage | FetchFailure:
    """The home page of `domain` by the first scheme whose server answers; never raises for
    problems of the target. `known` is a resolution of `domain` already made by the caller.
    """
    cache = {domain: known} if known is not None else {}
    attempts: list[dict[str, str]] = []
    async with _client(settings, transport) as client:
        fetcher = _Fetcher(client, settings, cache)
        for scheme in settings.schemes:
            result = await fetcher.chain(httpx.URL(f"{scheme}://{domain}/"))
            if isinstance(result, HomePage):
                return result
            attempts.extend(result.attempts)
            if result.responded:
                result.attempts = attempts
                return result
    error = "; ".join(f"{attempt['url']}: {attempt['error']}" for attempt in attempts)
    return FetchFailure(error or "no scheme to try", attempts=attempts)
