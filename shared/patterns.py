"""User patterns compiled with RE2: matching time linear in the text, never backtracking.

RE2 refuses what would need backtracking (backreferences, lookaround) and patterns too large
for its memory budget; the API refuses at submit every pattern `compile_pattern` refuses, and
the worker compiles the same way, so what was accepted runs.

google-re2's module-level `compile` keeps its last 128 patterns alive in a cache, each with a
DFA of up to `MAX_MEM_BYTES`: an adversary sending many large patterns would pin that memory in
every worker. Patterns are therefore built with `re2._Regexp`, the class `compile` itself
builds, and live only while the caller holds them. That name is the one private part of the
library used, here only; tests/unit/shared/test_patterns.py fails if it changes.
"""

from __future__ import annotations

from typing import Any, Protocol

import re2

# RE2's own default. Its DFA cache lives inside this budget; a smaller one sends more patterns
# to the slower NFA (docs/performance.md, "Content rules").
MAX_MEM_BYTES = 8 << 20


class Match(Protocol):
    def span(self) -> tuple[int, int]: ...


class Pattern(Protocol):
    """A compiled pattern: `finditer` over UTF-8 bytes, spans in bytes."""

    @property
    def programsize(self) -> int: ...

    def finditer(self, text: bytes, pos: int | None = None, endpos: int | None = None) -> Any: ...


class UnsupportedPattern(ValueError):
    """RE2 cannot run the pattern; `reason` is RE2's own words."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(
            f"pattern '{pattern}' is refused by RE2, which matches in linear time "
            f"(no backreferences or lookaround): {reason}"
        )
        self.pattern = pattern
        self.reason = reason


def _options(*, literal: bool) -> Any:
    options = re2.Options()
    options.max_mem = MAX_MEM_BYTES
    # Only the span of the whole match is ever read; without groups RE2 can stay in its DFA.
    options.never_capture = True
    # RE2 would otherwise print every refused pattern to the process's stderr.
    options.log_errors = False
    if literal:
        options.literal = True
        options.case_sensitive = False
    return options


def _build(pattern: str, *, literal: bool) -> Pattern:
    try:
        compiled: Pattern = re2._Regexp(pattern, _options(literal=literal))
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "refused"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise UnsupportedPattern(pattern, str(reason)) from exc
    return compiled


def compile_pattern(pattern: str) -> Pattern:
    """`pattern` in RE2 syntax, compiled; UnsupportedPattern if RE2 cannot run it."""
    return _build(pattern, literal=False)


def compile_keyword(keyword: str) -> Pattern:
    """`keyword` as a case-insensitive literal: no character in it is special."""
    return _build(keyword, literal=True)
