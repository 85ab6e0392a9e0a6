"""DNS rebinding: a name that answers differently each time it is asked cannot steer a scan.
The scanner asks once, checks that answer, and connects to the checked address on every hop."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from shared.settings import Settings
from tests.sites import HOME, Route, RoutedSite, routed_site
from worker_service.scanner import scan_domain

NAME = "rebind.test."
NO_RULES: dict[str, Any] = {"keywords": [], "regexes": []}


@dataclass
class RebindingDns:
    """Answers A with `first` once, then `later` forever; AAAA always with `aaaa`."""

    first: str
    later: str
    aaaa: str
    address: str = ""
    queries: Counter[str] = field(default_factory=Counter)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        rdtype = dns.rdatatype.to_text(question.rdtype)
        if question.name.to_text() != NAME:
            return response
        self.queries[rdtype] += 1
        if rdtype == "A":
            record = self.first if self.queries["A"] == 1 else self.later
        elif rdtype == "AAAA":
            record = self.aaaa
        else:
            return response
        name = dns.name.from_text(NAME)
        response.answer.append(
            dns.rrset.from_text_list(name, 0, dns.rdataclass.IN, rdtype, [record])
        )
        return response


@pytest.fixture
def rebinding_dns() -> Iterator[RebindingDns]:
    # Later answers point where no scan may go: a blackhole, whose connection would hang.
    server = RebindingDns(first="127.0.0.1", later="10.255.255.1", aaaa="::ffff:169.254.169.254")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    server.address = f"127.0.0.1:{sock.getsockname()[1]}"
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            sock.sendto(server.answer(dns.message.from_wire(data)).to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        sock.close()


@pytest.fixture
def site() -> Iterator[RoutedSite]:
    with routed_site() as local:
        yield local


async def test_every_hop_connects_to_the_first_checked_answer_though_later_ones_differ(
    rebinding_dns: RebindingDns, site: RoutedSite
) -> None:
    # Redirects back to the same name: each hop is a chance to ask DNS again, and get 10.x.
    site.routes["/"] = Route(status=302, headers={"Location": "/step"})
    site.routes["/step"] = Route(
        status=301, headers={"Location": f"http://rebind.test:{site.port}/home"}
    )
    site.routes["/home"] = Route(body=HOME)
    settings = Settings(
        dns_nameservers=[rebinding_dns.address],
        allow_private=True,
        schemes=["http"],
        http_port=site.port,
        fetch_timeout_s=3.0,
        total_timeout_s=10.0,
    )

    report = await scan_domain("rebind.test", NO_RULES, settings)

    page = report["http"]
    assert page.get("error") is None, page
    assert (page["status"], page["title"]) == (200, "Local Test Site")
    assert [hop["status"] for hop in page["chain"]] == [302, 301, 200]
    # All three requests reached the site at the first answer, named in Host only.
    assert [path for _host, path in site.requests] == ["/", "/step", "/home"]
    assert {host.partition(":")[0] for host, _path in site.requests} == {"rebind.test"}
    # Asked once; the later, different answer never came into play.
    assert rebinding_dns.queries["A"] == 1
    # The IPv6-mapped metadata address in AAAA is reported as a fact and never connected to.
    assert report["dns"]["aaaa"] == ["::ffff:169.254.169.254"]
    assert report["dns"]["a"] == ["127.0.0.1"]
