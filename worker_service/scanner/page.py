"""Reading a capped response body and the few facts a scan keeps from it."""

from __future__ import annotations

import codecs
import html
import re
import zlib
from dataclasses import dataclass

import httpx

MAX_TITLE_CHARS = 300
META_SNIFF_BYTES = 1024
# Bounded repetition keeps the search linear on pages full of unclosed tags.
TITLE_OPEN = re.compile(r"<title\b[^>]{0,200}>", re.IGNORECASE)
TITLE_CLOSE = re.compile(r"</title\s*>", re.IGNORECASE)
META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.I)
WHITESPACE = re.compile(r"\s+")
# 32 + MAX_WBITS accepts both gzip and zlib framing, which servers use for "gzip" and "deflate".
ZLIB_AUTO_WBITS = 32 + zlib.MAX_WBITS


@dataclass(frozen=True, slots=True)
class Body:
    """At most the capped number of body bytes, with gzip/deflate content-encoding removed.

    `decoded` is False when the content-encoding could not be removed; `content` then holds
    the raw bytes, which are not text.
    """

    content: bytes
    truncated: bool
    decoded: bool = True


def _decompressor(encoding: str) -> zlib._Decompress | None:
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(ZLIB_AUTO_WBITS)
    return None


async def read_capped(response: httpx.Response, max_bytes: int) -> Body:
    """Read the streamed body up to `max_bytes`, never inflating more than that into memory."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    decompressor = _decompressor(encoding)
    decodable = decompressor is not None or encoding in ("", "identity")
    content = bytearray()
    raw_size = 0
    async for raw in response.aiter_raw():
        raw_size += len(raw)
        room = max_bytes - len(content)
        try:
            data = decompressor.decompress(raw, room + 1) if decompressor else raw
        except zlib.error:
            return Body(bytes(content), truncated=False, decoded=False)
        content += data[:room]
        # A compressed stream that inflates to nothing must still stop at the cap.
        if len(data) > room or raw_size > max_bytes:
            return Body(bytes(content), truncated=True, decoded=decodable)
    return Body(bytes(content), truncated=False, decoded=decodable)


# Codecs Python registers as text encodings that are not a page's charset: they decode to
# escapes or lone surrogates, or refuse every byte string (`undefined`, `idna` with errors).
_NOT_PAGE_CHARSETS = frozenset(
    {"undefined", "idna", "punycode", "unicode-escape", "raw-unicode-escape", "charmap"}
)


def _known_codec(name: str | None) -> str | None:
    """The codec `name` stands for, if it decodes bytes to text; None for unknown names and for
    bytes-to-bytes codecs (base64, zlib, hex, rot13...), which a page may name but not use."""
    if not name:
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    # `_is_text_encoding` is how str.decode itself refuses the bytes-to-bytes codecs.
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_PAGE_CHARSETS:
        return None
    return info.name


def decode_text(body: Body, response: httpx.Response) -> str:
    """The body as text: header charset, then a <meta charset>, then UTF-8; never raises.

    A charset that is not a text encoding, or whose decoder fails anyway, is ignored for UTF-8.
    """
    if not body.decoded:
        return ""
    sniffed = META_CHARSET.search(body.content[:META_SNIFF_BYTES])
    codec = (
        _known_codec(response.charset_encoding)
        or _known_codec(sniffed.group(1).decode("ascii") if sniffed else None)
        or "utf-8"
    )
    try:
        return body.content.decode(codec, errors="replace")
    except (UnicodeError, LookupError, ValueError, TypeError):
        return body.content.decode("utf-8", errors="replace")


def extract_title(text: str) -> str | None:
    """The first <title>, unescaped, whitespace-collapsed, at most MAX_TITLE_CHARS; else None."""
    opening = TITLE_OPEN.search(text)
    if opening is None:
        return None
    closing = TITLE_CLOSE.search(text, opening.end())
    if closing is None:
        return None
    title = WHITESPACE.sub(" ", html.unescape(text[opening.end() : closing.start()])).strip()
    return title[:MAX_TITLE_CHARS] or None
