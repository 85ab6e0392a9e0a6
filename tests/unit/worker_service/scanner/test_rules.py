"""Keyword and regex rules report only what matches, with bounded counts."""

from __future__ import annotations

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
