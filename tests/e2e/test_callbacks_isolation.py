"""One client's receiver cannot hurt the others, against a real relay process: a stalled
receiver holds only its client's share of the delivery slots, a gzip bomb costs the relay no
memory, and callback host lookups that never get an answer leave the outbox publishing."""

from __future__ import annotations

import functools
import gzip
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import callbacks
from shared.embedded import EmbeddedUrls
from shared.settings import Settings
from tests.e2e.relays import Db, fleet
from tests.helpers import make_user, wait_until
from tests.nameservers import nameserver
from tests.receivers import receiving
from tests.relay_support import create_tasks, unpublished_count
from tests.sites import Site

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]
DEADLINE_S = 60.0
BOMB_INFLATED_BYTES = 1 << 30
# What the relay's peak memory may grow by while it delivers the bomb (a quarter of its
# inflated size would show it was read).
PEAK_GROWTH_MAX_KB = 100 * 1024


@pytest.fixture
def db(settings: Settings) -> Iterator[Db]:
    database = Db(settings)
    yield database
    database.close()


@functools.cache
def gzip_bomb() -> bytes:
    """1 GiB of zeros gzipped twice (sent as `Content-Encoding: gzip, gzip`): under 3 KB."""
    inner = zlib.compressobj(9, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
    chunk = bytes(1 << 20)
    parts = [inner.compress(chunk) for _ in range(BOMB_INFLATED_BYTES // len(chunk))]
    return gzip.compress(b"".join([*parts, inner.flush()]), 9)


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in kB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


async def seed(
    sessionmaker: async_sessionmaker[AsyncSession], urls_by_user: dict[str, list[str]]
) -> None:
    """Users with a signing secret and due deliveries to `urls`, in this order."""
    for name, urls in urls_by_user.items():
        user, _ = await make_user(sessionmaker, name)
        async with sessionmaker() as session, session.begin():
            await callbacks.rotate_secret(session, user.id, f"whsec_{name}", keep_previous=False)
            await session.execute(
                text(
                    "INSERT INTO deliveries (delivery_id, user_id, url, payload)"
                    " SELECT gen_random_uuid(), :user_id, url, '{}'::jsonb FROM unnest("
                    " CAST(:urls AS text[])) WITH ORDINALITY AS u(url, n) ORDER BY n"
                ),
                {"user_id": user.id, "urls": urls},
            )


async def outcomes(sessionmaker: async_sessionmaker[AsyncSession], url_part: str) -> list[tuple]:
    """(delivered, last status, last error) of the deliveries whose URL holds `url_part`."""
    async with sessionmaker() as session:
        rows = await session.execute(
            text(
                "SELECT delivered_at IS NOT NULL, last_status, last_error FROM deliveries"
                " WHERE url LIKE '%' || :part || '%' ORDER BY id"
            ),
            {"part": url_part},
        )
        return [tuple(row) for row in rows]


def test_a_stalled_receiver_and_a_gzip_bomb_leave_another_clients_callbacks_on_time(
    servers: EmbeddedUrls, site: Site, tmp_path: Path, db: Db
) -> None:
    bomb = gzip_bomb()
    with (
        receiving() as stalled,
        receiving() as bombing,
        receiving() as fast,
        fleet(servers.database_url, servers.redis_url, site.port, tmp_path) as group,
    ):
        stalled.gate = threading.Event()
        bombing.body = bomb
        bombing.headers = {"Content-Type": "application/json", "Content-Encoding": "gzip, gzip"}
        relay = group.relay("relay", SCAN_CALLBACK_ALLOW_HTTP="true", SCAN_CALLBACK_TIMEOUT_S="120")
        before = memory_kb(relay.service.process.pid)
        # The stalled client's backlog is oldest: a claim in order would take every slot.
        db(
            lambda sm: seed(
                sm,
                {
                    "stalled": [stalled.url(host="a.hooks.example.com")] * 60,
                    "bomb": [bombing.url(host="b.hooks.example.com")],
                    "fast": [fast.url(host="c.hooks.example.com")] * 20,
                },
            )
        )
        try:
            wait_until(lambda: len(fast.received) == 20, DEADLINE_S, "the fast client's callbacks")
            [bombed] = wait_until(
                lambda: [row for row in db(lambda sm: outcomes(sm, "b.hooks")) if row[1]],
                DEADLINE_S,
                "the bomb's delivery to be recorded",
            )
            held = (stalled.arrived, len(stalled.received))
        finally:
            stalled.gate.set()
        after = memory_kb(relay.service.process.pid)
        assert relay.live()

    assert held[1] == 0, "the stalled receiver answered nothing while the others were served"
    assert 0 < held[0] <= 10, "the stalled client held at most its share of the slots"
    assert bombed == (True, 200, None), "delivered on its status line, body unread"
    growth_kb = after["VmHWM"] - before["VmHWM"]
    assert growth_kb < PEAK_GROWTH_MAX_KB, f"peak memory grew {growth_kb} kB: {before} {after}"


def test_callback_lookups_that_never_get_an_answer_leave_the_relay_publishing(
    servers: EmbeddedUrls, site: Site, tmp_path: Path, db: Db
) -> None:
    with (
        nameserver() as black_hole,
        fleet(servers.database_url, servers.redis_url, site.port, tmp_path) as group,
    ):
        group.relay(
            "relay",
            SCAN_CALLBACK_ALLOW_HTTP="true",
            SCAN_DNS_NAMESERVERS=black_hole.address,
            SCAN_DNS_TIMEOUT_S="15",
            SCAN_CALLBACK_TIMEOUT_S="20",
        )
        db(
            lambda sm: seed(
                sm,
                {
                    f"client{u}": [f"http://hook{n}.client{u}.hung-dns.test/cb" for n in range(10)]
                    for u in range(5)
                },
            )
        )
        wait_until(lambda: len(black_hole.names()) >= 40, DEADLINE_S, "lookups left hanging")
        db(lambda sm: create_tasks(sm, 50))
        wait_until(lambda: db(unpublished_count) == 0, DEADLINE_S, "the outbox to be published")
        hanging = [row for row in db(lambda sm: outcomes(sm, "hung-dns")) if row[2] is None]

    assert len(hanging) == 50, "the outbox drained while every lookup was still unanswered"
    recorded = db(lambda sm: outcomes(sm, "hung-dns"))
    assert {row[2] for row in recorded} <= {"dns: timeout", None}
