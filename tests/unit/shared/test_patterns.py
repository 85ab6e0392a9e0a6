"""User patterns compile with RE2 the same way for the API and the worker; the one private name
of google-re2 they use still behaves as relied on."""

from __future__ import annotations

import pytest
import re2

from shared import patterns


def test_the_private_constructor_patterns_rely_on_still_exists_and_skips_the_cache() -> None:
    # shared/patterns.py builds with re2._Regexp so compiled patterns are not kept in
    # google-re2's module cache; if this fails, the library changed under it.
    options = re2.Options()
    first = re2._Regexp("abc", options)
    assert first.programsize > 0
    assert re2._Regexp("abc", options) is not first
    assert [m.span() for m in first.finditer(b"xabcabc", 0, 7)] == [(1, 4), (4, 7)]


@pytest.mark.parametrize(
    "pattern", [r"(a)\1", r"(?=a)", r"(?!a)", r"(?<=a)b", r"(?<!a)b", r"a\Z", "(", "a{1001}"]
)
def test_patterns_re2_cannot_run_are_refused_with_its_reason(pattern: str) -> None:
    with pytest.raises(patterns.UnsupportedPattern) as refused:
        patterns.compile_pattern(pattern)

    assert refused.value.pattern == pattern
    assert refused.value.reason
    assert f"'{pattern}'" in str(refused.value)


def test_a_backtracking_bomb_compiles_and_matches_spans_in_bytes() -> None:
    compiled = patterns.compile_pattern(r"(x+x+)+y")

    assert [m.span() for m in compiled.finditer("é xxy".encode())] == [(3, 6)]


def test_keywords_compile_as_case_insensitive_literals() -> None:
    compiled = patterns.compile_keyword("A.c(")

    assert [m.span() for m in compiled.finditer(b"abc( a.C( A.C(")] == [(5, 9), (10, 14)]
