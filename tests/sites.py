"""Local websites for scans to fetch, on 127.0.0.1 only: one counting every hit, and one
serving configured routes over HTTP or HTTPS."""

from __future__ import annotations

import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Site:
    port: int
    hits: Counter[str] = field(default_factory=Counter)

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())


@contextmanager
def local_site() -> Iterator[Site]:
    """Serves `<title>{Host}</title>` for any Host, on a free port."""
    site = Site(port=0)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host = (self.headers.get("Host") or "").split(":")[0]
            with lock:
                site.hits[host] += 1
            body = f"<html><head><title>{host}</title></head><body>welcome</body></html>".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Frame-Options", "DENY")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    site.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()


HOME = (
    b"<html><head><title>\n  Local   Test Site </title></head>"
    b"<body>Welcome to the ACME test site. acme! Mail: info@example.com</body></html>"
)


@dataclass(frozen=True)
class Route:
    status: int = 200
    body: bytes = HOME
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass
class RoutedSite:
    """Serves `routes` by path; records (Host, path) of every request. A `hang` route waits
    for `release` (set at teardown) and then closes without answering."""

    port: int = 0
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class _TLSServer(ThreadingHTTPServer):
    """Wraps each accepted connection in TLS on its own thread, so a refused handshake
    never stalls the accept loop."""

    tls: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        # The TLS socket took over the connection, so closing the original one would not.
        with wrapped:
            self.RequestHandlerClass(wrapped, client_address, self)


@contextmanager
def routed_site(tls: ssl.SSLContext | None = None) -> Iterator[RoutedSite]:
    """A RoutedSite on a free port of 127.0.0.1, over HTTPS when given a server context."""
    site = RoutedSite()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                site.requests.append((self.headers.get("Host", ""), self.path))
            route = site.routes.get(self.path, Route(status=404, body=b"not found"))
            if route.hang:
                site.release.wait(10)
                return
            self.send_response(route.status)
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server: ThreadingHTTPServer
    if tls is None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    else:
        server = _TLSServer(("127.0.0.1", 0), Handler)
        server.tls = tls
    server.daemon_threads = True
    site.port = server.server_address[1]
    # A short poll keeps teardown fast: shutdown() waits for the next poll.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield site
    finally:
        site.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class SlowSite:
    """Answers after `delay_s`; a host named `hang…` gets no answer until teardown. Counts the
    requests in flight, overall and per host, and the most there ever were."""

    port: int = 0
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: Counter[str] = field(default_factory=Counter)
    most_in_flight: Counter[str] = field(default_factory=Counter)
    total_in_flight: int = 0
    release: threading.Event = field(default_factory=threading.Event)

    def enter(self, host: str) -> None:
        with self.lock:
            self.in_flight[host] += 1
            self.total_in_flight += 1
            self.most_in_flight[host] = max(self.most_in_flight[host], self.in_flight[host])

    def leave(self, host: str) -> None:
        with self.lock:
            self.in_flight[host] -= 1
            self.total_in_flight -= 1


class _BusyServer(ThreadingHTTPServer):
    # Hundreds of scans may connect at once; the default backlog of 5 would drop connects.
    request_queue_size = 1024
    daemon_threads = True


@contextmanager
def slow_site(delay_s: float) -> Iterator[SlowSite]:
    """A SlowSite on a free port of 127.0.0.1."""
    site = SlowSite(delay_s=delay_s)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host = (self.headers.get("Host") or "").split(":")[0]
            site.enter(host)
            try:
                if site.release.wait(None if host.startswith("hang") else site.delay_s):
                    return
                body = HOME
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the scan gave up on us
            finally:
                site.leave(host)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = _BusyServer(("127.0.0.1", 0), Handler)
    site.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield site
    finally:
        site.release.set()
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Page:
    """What a host of a `pages_by_host` site answers: a body and its headers."""

    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@contextmanager
def pages_by_host(pages: dict[str, Page]) -> Iterator[Site]:
    """Serves `pages[name]` to a Host whose first label is `name`, and `<title>{Host}</title>`
    like `local_site` to any other; counts hits by Host."""
    site = Site(port=0)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host = (self.headers.get("Host") or "").split(":")[0]
            with lock:
                site.hits[host] += 1
            page = pages.get(host.split(".")[0]) or Page(
                f"<html><head><title>{host}</title></head><body>welcome</body></html>".encode()
            )
            try:
                self.send_response(200)
                self.send_header("Content-Type", page.content_type)
                self.send_header("Content-Length", str(len(page.body)))
                for name, value in page.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(page.body)
            except OSError:
                pass  # the scan refused what it was sent and hung up

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = _BusyServer(("127.0.0.1", 0), Handler)
    site.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
