"""A local HTTP receiver for completion callbacks, on 127.0.0.1: records every request and
answers with the statuses it is told, in order (the last one repeats)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

GATE_MAX_S = 30.0
DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _documented_blocks() -> list[str]:
    section = DOC.read_text().split("### Verifying a callback", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def documented_verify() -> Callable[..., bool]:
    """The plain-Python callback `verify` function exactly as docs/api.md shows it."""
    (code,) = [block for block in _documented_blocks() if "def verify" in block]
    scope: dict[str, Any] = {}
    exec(code, scope)
    verify: Callable[..., bool] = scope["verify"]
    return verify


def documented_receiver() -> Callable[[str, dict[str, str], bytes], bool]:
    """The receiver docs/api.md shows with the `standardwebhooks` package, run as written
    with `secret`, `headers` and `body` given: True when it accepts the callback."""
    (code,) = [block for block in _documented_blocks() if "standardwebhooks" in block]
    from standardwebhooks import WebhookVerificationError

    def receive(secret: str, headers: dict[str, str], body: bytes) -> bool:
        scope: dict[str, Any] = {"secret": secret, "headers": headers, "body": body}
        try:
            exec(code, scope)
        except WebhookVerificationError:
            return False
        return scope["event"] == json.loads(body)

    return receive


def legacy_verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """A receiver of the deprecated Scan-* headers, as earlier releases documented it."""
    timestamp = headers["Scan-Timestamp"]
    if abs(time.time() - int(timestamp)) > 300:
        return False
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    sent = [part.strip().removeprefix("v1=") for part in headers["Scan-Signature"].split(",")]
    return any(hmac.compare_digest(mac.hexdigest(), candidate) for candidate in sent)


def verifies(secret: str, got: Received) -> bool:
    """Every way a receiver may check `got`: the documented library receiver, the documented
    plain-Python one and the deprecated Scan-* headers all accept it."""
    return (
        documented_receiver()(secret, got.headers, got.body)
        and documented_verify()(secret, got.headers, got.body)
        and legacy_verify(secret, got.headers, got.body)
    )


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    statuses: list[int] = field(default_factory=lambda: [200])
    location: str | None = None  # sent with a 3xx
    # While set, answers wait for `gate` (at most GATE_MAX_S): a receiver that hangs.
    gate: threading.Event | None = None
    # POSTs whose body has been read, held at the gate or not: `received` has only those
    # answered (or whose sender went away while they were held).
    arrived: int = 0
    received: list[Received] = field(default_factory=list)
    # Sent with every answer: a body and headers of the receiver's choosing.
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def url(self, host: str = "hooks.example.com", path: str = "/cb") -> str:
        return f"http://{host}:{self.port}{path}"


@contextmanager
def receiving(
    port: int = 0, statuses: list[int] | None = None, bind: str = "127.0.0.1"
) -> Iterator[Receiver]:
    """A receiver on `bind` (127.0.0.1, or ::1 for an IPv6 one)."""
    receiver = Receiver(port=port, statuses=list(statuses or [200]))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                receiver.arrived += 1
            if receiver.gate is not None:
                receiver.gate.wait(GATE_MAX_S)
            with lock:
                receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                status = (
                    receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                )
            self.send_response(status)
            if 300 <= status < 400 and receiver.location:
                self.send_header("Location", receiver.location)
            for name, value in receiver.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(receiver.body)))
            self.end_headers()
            # The sender may stop reading the body: its choice.
            with contextlib.suppress(OSError):
                self.wfile.write(receiver.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server_class = ThreadingHTTPServer
    if ":" in bind:

        class IPv6Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_class = IPv6Server
    server = server_class((bind, port), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
