"""Keyword and regex rules report only what matches, with bounded counts."""

from __future__ import annotations

import time

from shared import patterns
from worker_service.scanner import rules

PAGE = "Welcome to ACME Shop. acme sells anvils. Contact: sales@acme.test, help@acme.test"


def test_keywords_match_case_insensitively_and_count_occurrences() -> None:
    findings = rules.apply_rules(PAGE, {"keywords": ["Acme", "anvils"], "regexes": []})

    assert findings == [
        {
            "rule": "keyword",
            "pattern": "Acme",
            "count": 4,
            "excerpt": "Welcome to ACME Shop. acme sells anvils. Contact: sales",
        },
        {
            "rule": "keyword",
            "pattern": "anvils",
            "count": 1,
            "excerpt": (
                "Welcome to ACME Shop. acme sells anvils. Contact: sales@acme.test, help@acme.te"
            ),
        },
    ]


def test_regexes_report_their_match_count() -> None:
    findings = rules.apply_rules(PAGE, {"keywords": [], "regexes": [r"[a-z]+@acme\.test"]})

    assert findings == [
        {
            "rule": "regex",
            "pattern": r"[a-z]+@acme\.test",
            "count": 2,
            "excerpt": "ACME Shop. acme sells anvils. Contact: sales@acme.test, help@acme.test",
        }
    ]


def test_rules_that_do_not_match_are_left_out() -> None:
    config = {"keywords": ["casino", ""], "regexes": [r"\d{6}"]}

    assert rules.apply_rules(PAGE, config) == []


def test_keywords_come_before_regexes_in_config_order() -> None:
    config = {"keywords": ["shop"], "regexes": ["sells"]}

    assert [finding["rule"] for finding in rules.apply_rules(PAGE, config)] == ["keyword", "regex"]


def test_counts_are_capped() -> None:
    text = "a " * 1000

    findings = rules.apply_rules(text, {"keywords": ["a"], "regexes": ["a"]})

    assert [finding["count"] for finding in findings] == [rules.MAX_COUNT, rules.MAX_COUNT]


def test_missing_or_malformed_config_lists_mean_no_rules() -> None:
    assert rules.apply_rules(PAGE, {}) == []
    assert rules.apply_rules(PAGE, {"keywords": "acme", "regexes": None}) == []


def test_excerpts_are_short_and_on_one_line() -> None:
    text = "x" * 500 + "\n\n  needle \t here  " + "y" * 500

    [finding] = rules.apply_rules(text, {"keywords": ["NEEDLE"]})

    assert finding["excerpt"] == "x" * 36 + " needle here " + "y" * 31


def test_a_backtracking_bomb_returns_promptly_with_no_finding() -> None:
    # Python's re needs ~2^n steps for this pattern on n x's: 200,000 would never end.
    config = {"regexes": [r"(x+x+)+y", r"(a|aa)*b", r".*.*.*=.*"]}

    assert rules.apply_rules("x" * 200_000, config) == []


def test_a_pattern_re2_refuses_is_reported_not_applied_and_the_others_run() -> None:
    config = {"regexes": [r"(a)\1", r"(?=acme)", r"[a-z]+@acme\.test"]}

    findings = rules.apply_rules(PAGE, config)

    assert [(finding["rule"], finding["pattern"]) for finding in findings] == [
        ("rule_not_applied", r"(a)\1"),
        ("rule_not_applied", "(?=acme)"),
        ("regex", r"[a-z]+@acme\.test"),
    ]
    assert "RE2" in findings[0]["reason"]


def test_rules_past_the_budget_are_reported_not_applied() -> None:
    config = {"keywords": ["acme"], "regexes": ["sells"]}

    findings = rules.apply_rules(PAGE, config, budget_s=0)

    assert findings == [
        {
            "rule": "rule_not_applied",
            "kind": "keyword",
            "pattern": "acme",
            "reason": "rule time budget of 0s reached",
        },
        {
            "rule": "rule_not_applied",
            "kind": "regex",
            "pattern": "sells",
            "reason": "rule time budget of 0s reached",
        },
    ]


def test_the_scans_own_deadline_stops_the_rules_when_it_comes_first() -> None:
    findings = rules.apply_rules(PAGE, {"regexes": ["sells"]}, not_after=time.monotonic() - 1)

    assert findings == [
        {
            "rule": "rule_not_applied",
            "kind": "regex",
            "pattern": "sells",
            "reason": "scan time limit reached",
        }
    ]


def test_a_pattern_too_large_for_the_whole_page_searches_a_prefix_and_says_how_much() -> None:
    pattern = r"a[ab]{900}c"
    size = patterns.compile_pattern(pattern).programsize
    limit = rules.MAX_SEARCH_COST // size
    text = "b" * (limit + 10_000) + "a" + "b" * 900 + "c"

    [finding] = rules.apply_rules(text, {"regexes": [pattern]})

    assert finding == {"rule": "regex", "pattern": pattern, "count": 0, "searched_bytes": limit}


def test_regex_excerpts_keep_whole_characters_around_a_match() -> None:
    text = "é" * 100 + " Straße 12 " + "ü" * 100

    [finding] = rules.apply_rules(text, {"regexes": [r"\d+"]})

    start = text.index("12")
    assert finding["excerpt"] == rules.excerpt(text, start, start + 2)
    assert finding["excerpt"] == "é" * 32 + " Straße 12 " + "ü" * 39


def test_a_keyword_is_found_where_case_folding_changes_the_text_length() -> None:
    text = "STRASSE straße and then ACME"

    [finding] = rules.apply_rules(text, {"keywords": ["acme"]})

    assert finding["count"] == 1
    assert finding["excerpt"] == text
