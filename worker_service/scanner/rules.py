"""Keyword and regex rules applied to a page's text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MAX_COUNT = 100


def count_keyword(text_folded: str, keyword: str) -> int:
    """Non-overlapping case-insensitive occurrences of `keyword`, at most MAX_COUNT."""
    needle = keyword.casefold()
    return min(text_folded.count(needle), MAX_COUNT) if needle else 0


def count_regex(text: str, pattern: str) -> int:
    """Matches of `pattern` in `text`, counting stops at MAX_COUNT so a dense pattern ends early."""
    count = 0
    for _match in re.finditer(pattern, text):
        count += 1
        if count >= MAX_COUNT:
            break
    return count


def _strings(values: object) -> list[str]:
    if not isinstance(values, Iterable) or isinstance(values, str | bytes):
        return []
    return [value for value in values if isinstance(value, str)]


def apply_rules(text: str, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One finding per keyword or regex of `config` that matches `text`, in config order.

    Callers pass the capped body only; that and MAX_COUNT are the cheap bound on regex cost.
    """
    findings: list[dict[str, Any]] = []
    folded = text.casefold()
    for keyword in _strings(config.get("keywords")):
        count = count_keyword(folded, keyword)
        if count:
            findings.append({"rule": "keyword", "pattern": keyword, "count": count})
    for pattern in _strings(config.get("regexes")):
        count = count_regex(text, pattern)
        if count:
            findings.append({"rule": "regex", "pattern": pattern, "count": count})
    return findings
