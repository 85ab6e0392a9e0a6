"""A local DNS server on 127.0.0.1 (UDP) for callback host lookups: records every query and
answers A queries with one address once `release` is set; until then (or for ever, if it
never is) it answers nothing, as a hung resolver does."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import dns.message
import dns.rdatatype
import dns.rrset


@dataclass
class Nameserver:
    port: int
    answer: str
    release: threading.Event = field(default_factory=threading.Event)
    # (name, type) of every query received, in order.
    queries: list[tuple[str, str]] = field(default_factory=list)

    @property
    def address(self) -> str:
        """As SCAN_DNS_NAMESERVERS takes it."""
        return f"127.0.0.1:{self.port}"

    def names(self, rdtype: str = "A") -> set[str]:
        return {name for name, kind in list(self.queries) if kind == rdtype}


def _reply(server: Nameserver, wire: bytes) -> bytes | None:
    try:
        query = dns.message.from_wire(wire)
    except Exception:  # a stray datagram is not a test's concern
        return None
    response = dns.message.make_response(query)
    question = query.question[0]
    if question.rdtype == dns.rdatatype.A:
        response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", server.answer))
    return response.to_wire()


def _serve(server: Nameserver, sock: socket.socket, stop: threading.Event) -> None:
    held: list[tuple[bytes, tuple[str, int]]] = []
    while not stop.is_set():
        try:
            wire, peer = sock.recvfrom(4096)
        except TimeoutError:
            wire = b""
        if wire:
            try:
                query = dns.message.from_wire(wire)
                question = query.question[0]
                server.queries.append(
                    (question.name.to_text().rstrip("."), dns.rdatatype.to_text(question.rdtype))
                )
            except Exception:
                continue
            held.append((wire, peer))
        if server.release.is_set():
            for pending, to in held:
                reply = _reply(server, pending)
                if reply is not None:
                    sock.sendto(reply, to)
            held.clear()


@contextmanager
def nameserver(answer: str = "127.0.0.1") -> Iterator[Nameserver]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.02)
    server = Nameserver(port=sock.getsockname()[1], answer=answer)
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(server, sock, stop), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        sock.close()
