"""The website every fault-suite scan fetches: slow on purpose, counting each fetch per domain.

Each answer's title is `{host} #{n}`, n counting that host's requests, so a result tells which
fetch it came from: a stale worker's result would carry an older number than its successor's.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class CountingSite:
    port: int = 0
    delay_s: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.requests)


class _Server(ThreadingHTTPServer):
    # Room for every worker thread of the stack connecting at once.
    request_queue_size = 128
    daemon_threads = True


@contextmanager
def counting_site(delay_s: float = 0.0) -> Iterator[CountingSite]:
    """A CountingSite on a free port of 127.0.0.1 answering after `delay_s`."""
    site = CountingSite(delay_s=delay_s)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host = (self.headers.get("Host") or "").split(":")[0]
            with site.lock:
                site.requests[host] += 1
                number = site.requests[host]
            if site.delay_s:
                time.sleep(site.delay_s)
            body = f"<html><head><title>{host} #{number}</title></head></html>".encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # a killed worker's connection

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    site.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
