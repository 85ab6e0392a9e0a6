"""DNS records through a real resolver talking to a small authoritative server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from shared.settings import Settings
from worker_service.scanner import resolver

ZONE: dict[tuple[str, str], list[str]] = {
    ("scan.test.", "A"): ["192.0.2.10"],
    ("scan.test.", "AAAA"): ["2001:db8::10"],
    ("scan.test.", "MX"): ["10 mx1.scan.test.", "5 mx0.scan.test."],
    ("scan.test.", "TXT"): ['"v=spf1 -all"', '"google-site-verification=abc"'],
    ("alias.scan.test.", "CNAME"): ["scan.test."],
}


def answer(query: dns.message.Message) -> dns.message.Message:
    """Answers from ZONE, following a CNAME the way a resolving server would."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    question = query.question[0]
    name, wanted = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
    known = {owner for owner, _rdtype in ZONE}
    if name not in known:
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response
    alias = ZONE.get((name, "CNAME"))
    if alias and wanted != "CNAME":
        response.answer.append(rrset(name, "CNAME", alias))
        name = alias[0]
    records = ZONE.get((name, wanted))
    if records:
        response.answer.append(rrset(name, wanted, records))
    return response


def rrset(name: str, rdtype: str, records: list[str]) -> dns.rrset.RRset:
    return dns.rrset.from_text_list(
        dns.name.from_text(name), 60, dns.rdataclass.IN, rdtype, records
    )


@pytest.fixture
def nameserver() -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            sock.sendto(answer(dns.message.from_wire(data)).to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        sock.close()


async def test_every_reported_record_type_comes_from_the_configured_nameserver(
    nameserver: str,
) -> None:
    records = await resolver.lookup_records("scan.test", Settings(dns_nameservers=[nameserver]))

    assert records.to_json() == {
        "a": ["192.0.2.10"],
        "aaaa": ["2001:db8::10"],
        "cname": [],
        "mx": [
            {"preference": 5, "exchange": "mx0.scan.test"},
            {"preference": 10, "exchange": "mx1.scan.test"},
        ],
        "txt": ["google-site-verification=abc", "v=spf1 -all"],
        "error": None,
    }


async def test_an_alias_reports_its_cname_and_the_addresses_it_leads_to(nameserver: str) -> None:
    records = await resolver.lookup_records(
        "alias.scan.test", Settings(dns_nameservers=[nameserver])
    )

    assert records.cname == ["scan.test"]
    assert records.resolution.a == ["192.0.2.10"]


async def test_an_unknown_name_is_nxdomain(nameserver: str) -> None:
    records = await resolver.lookup_records("nowhere.test", Settings(dns_nameservers=[nameserver]))

    assert records.to_json()["error"] == "NXDOMAIN"
