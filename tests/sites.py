"""A local website for scans to fetch: 127.0.0.1 only, counting every hit."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
