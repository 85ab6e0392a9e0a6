"""Body reading stops at the cap, even for compressed bodies; title and charset are robust."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from worker_service.scanner import page


class ChunkedStream(httpx.AsyncByteStream):
    """A body delivered in small chunks, as a network read would deliver it."""

    def __init__(self, content: bytes, chunk_bytes: int = 512) -> None:
        self.chunks = [content[i : i + chunk_bytes] for i in range(0, len(content), chunk_bytes)]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


def response(content: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(200, headers=headers, stream=ChunkedStream(content))


async def test_body_under_the_cap_is_read_whole() -> None:
    body = await page.read_capped(response(b"x" * 100), max_bytes=1024)

    assert body == page.Body(b"x" * 100, truncated=False)


async def test_body_over_the_cap_is_cut_and_marked_truncated() -> None:
    body = await page.read_capped(response(b"x" * 5000), max_bytes=1024)

    assert body.content == b"x" * 1024
    assert body.truncated


async def test_gzip_body_is_inflated() -> None:
    raw = b"<title>Zipped</title>"

    body = await page.read_capped(
        response(gzip.compress(raw), **{"content-encoding": "gzip"}), max_bytes=1024
    )

    assert body == page.Body(raw, truncated=False)


async def test_deflate_body_is_inflated() -> None:
    body = await page.read_capped(
        response(zlib.compress(b"hello"), **{"content-encoding": "deflate"}), max_bytes=1024
    )

    assert body.content == b"hello"


async def test_compression_bomb_inflates_no_further_than_the_cap() -> None:
    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))

    body = await page.read_capped(response(bomb, **{"content-encoding": "gzip"}), max_bytes=2048)

    assert len(body.content) == 2048
    assert body.truncated


async def test_unknown_encoding_is_kept_raw_and_yields_no_text() -> None:
    resp = response(b"\x8b\x00compressed", **{"content-encoding": "br"})

    body = await page.read_capped(resp, max_bytes=1024)

    assert not body.decoded
    assert page.decode_text(body, resp) == ""


async def test_corrupt_gzip_yields_no_text() -> None:
    resp = response(b"definitely not gzip", **{"content-encoding": "gzip"})

    body = await page.read_capped(resp, max_bytes=1024)

    assert not body.decoded


def test_text_uses_the_header_charset() -> None:
    raw = "<title>Café</title>".encode("latin-1")
    resp = response(raw, **{"content-type": "text/html; charset=iso-8859-1"})

    assert page.decode_text(page.Body(raw, truncated=False), resp) == "<title>Café</title>"


def test_text_falls_back_to_meta_charset_then_utf8() -> None:
    raw = '<meta charset="windows-1252"><p>\x80</p>'.encode("latin-1")
    plain = response(raw, **{"content-type": "text/html"})

    assert "€" in page.decode_text(page.Body(raw, truncated=False), plain)
    utf8 = "ünïcode".encode()
    assert page.decode_text(page.Body(utf8, truncated=False), response(utf8)) == "ünïcode"


def test_unknown_charset_falls_back_to_utf8_with_replacement() -> None:
    raw = b"ok \xff"
    resp = response(raw, **{"content-type": "text/html; charset=no-such-codec"})

    assert page.decode_text(page.Body(raw, truncated=False), resp) == "ok \ufffd"


@pytest.mark.parametrize(
    ("html", "title"),
    [
        ("<html><head><title>Hello</title></head>", "Hello"),
        ("<TITLE lang='en'>\n  Many \t  spaces\n</TITLE >", "Many spaces"),
        ("<title>Fish &amp; Chips</title>", "Fish & Chips"),
        ("<title>   </title>", None),
        ("<title>never closed", None),
        ("<titles>not a title</titles>", None),
        ("no title at all", None),
    ],
)
def test_title_extraction(html: str, title: str | None) -> None:
    assert page.extract_title(html) == title


def test_title_is_capped() -> None:
    title = page.extract_title("<title>" + "a" * 1000 + "</title>")

    assert title == "a" * page.MAX_TITLE_CHARS


def test_title_search_stays_fast_on_many_unclosed_tags() -> None:
    assert page.extract_title("<title" * 200_000) is None


@pytest.mark.parametrize(
    "charset",
    ["base64", "rot13", "zlib", "hex", "uu", "bz2", "quopri", "undefined", "idna", "punycode"],
)
@pytest.mark.parametrize("where", ["header", "meta"])
def test_a_charset_that_is_not_a_text_encoding_falls_back_to_utf8(charset: str, where: str) -> None:
    raw = f'<meta charset="{charset}"><title>Café</title>'.encode() + b"\xff"
    content_type = f"text/html; charset={charset}" if where == "header" else "text/html"
    resp = response(raw, **{"content-type": content_type})

    text = page.decode_text(page.Body(raw, truncated=False), resp)

    assert text == raw.decode("utf-8", errors="replace")
    assert page.extract_title(text) == "Café"
