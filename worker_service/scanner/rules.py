"""Keyword and regex rules applied to a page's text, in linear time and within a time budget.

Regexes run with RE2 (`shared.patterns`) over the text's UTF-8 bytes, so no pattern backtracks.
Linear is not free: RE2's slowest path costs about its program size times the bytes searched, and
one search cannot be interrupted. So each search is bounded before it starts (at most
MAX_SEARCH_COST bytes times instructions: a pattern larger than MAX_SEARCH_COST / text bytes
searches only the first bytes, and says how many), and the whole run by a deadline checked
before every rule and after every match. Rules the deadline leaves out are reported as
`rule_not_applied`, never dropped silently. This is blocking work: the worker runs it in a
thread (`rule_threads`), where RE2 releases the GIL.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared import patterns

MAX_COUNT = 100
EXCERPT_CONTEXT_CHARS = 40
MAX_EXCERPT_CHARS = 160
# Bytes times RE2 instructions one search may cost: about 2 s at the slowest rate measured (RE2's
# NFA, ~20 ns per byte per instruction); a 1 MB page is searched whole by patterns of up to
# 100 instructions (docs/performance.md, "Content rules").
MAX_SEARCH_COST = 100_000_000
# UTF-8 needs at most 4 bytes a character: this many bytes hold the context either side.
_CONTEXT_BYTES = 4 * EXCERPT_CONTEXT_CHARS
_EXCERPT_BYTES = 4 * MAX_EXCERPT_CHARS
WHITESPACE = re.compile(r"\s+")


def count_keyword(text_folded: str, keyword: str) -> int:
    """Non-overlapping case-insensitive occurrences of `keyword`, at most MAX_COUNT."""
    needle = keyword.casefold()
    return min(text_folded.count(needle), MAX_COUNT) if needle else 0


def excerpt(text: str, start: int, end: int) -> str:
    """The match with a little context either side, whitespace collapsed, at most
    MAX_EXCERPT_CHARS."""
    window = text[max(0, start - EXCERPT_CONTEXT_CHARS) : end + EXCERPT_CONTEXT_CHARS]
    return WHITESPACE.sub(" ", window).strip()[:MAX_EXCERPT_CHARS]


def byte_excerpt(data: bytes, start: int, end: int) -> str:
    """`excerpt` for a match given in bytes of UTF-8 `data`; cut characters at the edges of
    the window are dropped."""
    before = data[max(0, start - _CONTEXT_BYTES) : start].decode("utf-8", "ignore")
    found = data[start : min(end, start + _EXCERPT_BYTES)].decode("utf-8", "replace")
    after = data[end : end + _CONTEXT_BYTES].decode("utf-8", "ignore")
    window = before[-EXCERPT_CONTEXT_CHARS:] + found + after[:EXCERPT_CONTEXT_CHARS]
    return WHITESPACE.sub(" ", window).strip()[:MAX_EXCERPT_CHARS]


def strings(values: object) -> list[str]:
    """The strings of a config list; anything else means no rules."""
    if not isinstance(values, Iterable) or isinstance(values, str | bytes):
        return []
    return [value for value in values if isinstance(value, str)]


def has_rules(config: Mapping[str, Any]) -> bool:
    return bool(strings(config.get("keywords")) or strings(config.get("regexes")))


def not_applied(kind: str, pattern: str, reason: str) -> dict[str, Any]:
    return {"rule": "rule_not_applied", "kind": kind, "pattern": pattern, "reason": reason}


def none_applied(config: Mapping[str, Any], reason: str) -> list[dict[str, Any]]:
    """A `rule_not_applied` finding for every rule of `config`, in config order."""
    return [
        not_applied(kind, pattern, reason)
        for kind, key in (("keyword", "keywords"), ("regex", "regexes"))
        for pattern in strings(config.get(key))
    ]


@dataclass
class _Run:
    """One application of a config to one text: the text in both forms and the deadline."""

    text: str
    deadline: float
    budget_message: str
    folded: str = field(init=False)
    data: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.folded = self.text.casefold()
        # A lone surrogate (some charsets decode to them) has no UTF-8 form: "?" stands in.
        self.data = self.text.encode("utf-8", "replace")

    def late(self) -> bool:
        return time.monotonic() >= self.deadline

    def keyword(self, keyword: str) -> dict[str, Any] | None:
        count = count_keyword(self.folded, keyword)
        if not count:
            return None
        return {"rule": "keyword", "pattern": keyword, "count": count, "excerpt": self._at(keyword)}

    def _at(self, keyword: str) -> str:
        needle = keyword.casefold()
        if len(self.folded) == len(self.text):
            # No character changed length when folded, so positions are the same in both.
            start = self.folded.find(needle)
            return excerpt(self.text, start, start + len(needle)) if start >= 0 else ""
        literal = patterns.compile_keyword(keyword)
        match = next(iter(literal.finditer(self.data, 0, self._limit(literal))), None)
        return byte_excerpt(self.data, *match.span()) if match is not None else ""

    def _limit(self, compiled: patterns.Pattern) -> int:
        return min(len(self.data), MAX_SEARCH_COST // max(1, compiled.programsize))

    def regex(self, pattern: str) -> dict[str, Any] | None:
        try:
            compiled = patterns.compile_pattern(pattern)
        except patterns.UnsupportedPattern as exc:
            return not_applied("regex", pattern, f"not supported by RE2: {exc.reason}")
        limit = self._limit(compiled)
        count, first, stopped = 0, None, False
        for match in compiled.finditer(self.data, 0, limit):
            first = first or match.span()
            count += 1
            if count >= MAX_COUNT:
                break
            if self.late():
                stopped = True
                break
        finding: dict[str, Any] = {"rule": "regex", "pattern": pattern, "count": count}
        if first is not None:
            finding["excerpt"] = byte_excerpt(self.data, *first)
        if limit < len(self.data):
            finding["searched_bytes"] = limit
        if stopped:
            finding["incomplete"] = self.budget_message
        return finding if count or limit < len(self.data) else None


def apply_rules(
    text: str,
    config: Mapping[str, Any],
    *,
    budget_s: float = 2.0,
    not_after: float | None = None,
) -> list[dict[str, Any]]:
    """One finding per keyword or regex of `config` that matches `text`, in config order
    (keywords first), with an excerpt around its first match.

    Work stops `budget_s` from now, or at the monotonic time `not_after` if sooner; every rule
    not run by then gets a `rule_not_applied` finding. A regex RE2 refuses gets one too.
    """
    deadline = time.monotonic() + budget_s
    message = f"rule time budget of {budget_s:g}s reached"
    if not_after is not None and not_after < deadline:
        deadline, message = not_after, "scan time limit reached"
    run = _Run(text, deadline, message)
    findings: list[dict[str, Any]] = []
    for kind, key in (("keyword", "keywords"), ("regex", "regexes")):
        for pattern in strings(config.get(key)):
            if run.late():
                findings.append(not_applied(kind, pattern, message))
                continue
            finding = run.keyword(pattern) if kind == "keyword" else run.regex(pattern)
            if finding is not None:
                findings.append(finding)
    return findings
