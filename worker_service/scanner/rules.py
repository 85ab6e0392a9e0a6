"""Keyword and regex rules applied to a page's text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MAX_COUNT = 100
EXCERPT_CONTEXT_CHARS = 40
MAX_EXCERPT_CHARS = 160
WHITESPACE = re.compile(r"\s+")


def count_keyword(text_folded: str, keyword: str) -> int:
    """Non-overlapping case-insensitive occurrences of `keyword`, at most MAX_COUNT."""
    needle = keyword.casefold()
    return min(text_folded.count(needle), MAX_COUNT) if needle else 0


def count_regex(text: str, pattern: str) -> tuple[int, re.Match[str] | None]:
    """Matches of `pattern` in `text` and the first one; counting stops at MAX_COUNT so a dense
    pattern ends early."""
    count = 0
    first: re.Match[str] | None = None
    for match in re.finditer(pattern, text):
        first = first or match
        count += 1
        if count >= MAX_COUNT:
            break
    return count, first


def excerpt(text: str, start: int, end: int) -> str:
    """The match with a little context either side, whitespace collapsed, at most
    MAX_EXCERPT_CHARS."""
    window = text[max(0, start - EXCERPT_CONTEXT_CHARS) : end + EXCERPT_CONTEXT_CHARS]
    return WHITESPACE.sub(" ", window).strip()[:MAX_EXCERPT_CHARS]


def _keyword_excerpt(text: str, keyword: str) -> str:
    # Case folding can change lengths, so the position is found in the original text.
    match = re.search(re.escape(keyword), text, re.IGNORECASE)
    return excerpt(text, match.start(), match.end()) if match else ""


def _strings(values: object) -> list[str]:
    if not isinstance(values, Iterable) or isinstance(values, str | bytes):
        return []
    return [value for value in values if isinstance(value, str)]


def apply_rules(text: str, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One finding per keyword or regex of `config` that matches `text`, in config order, with
    an excerpt around its first match.

    Callers pass the capped body only; that and MAX_COUNT are the cheap bound on regex cost.
    """
    findings: list[dict[str, Any]] = []
    folded = text.casefold()
    for keyword in _strings(config.get("keywords")):
        count = count_keyword(folded, keyword)
        if count:
            findings.append(
                {
                    "rule": "keyword",
                    "pattern": keyword,
                    "count": count,
                    "excerpt": _keyword_excerpt(text, keyword),
                }
            )
    for pattern in _strings(config.get("regexes")):
        count, first = count_regex(text, pattern)
        if first is not None:
            findings.append(
                {
                    "rule": "regex",
                    "pattern": pattern,
                    "count": count,
                    "excerpt": excerpt(text, first.start(), first.end()),
                }
            )
    return findings
