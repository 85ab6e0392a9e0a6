"""Changes between two runs of a schedule, domain by domain, from the scanner's reports."""

from __future__ import annotations

from typing import Any

from shared.run_changes import compare, facts


def report(
    title: str = "Home",
    status: int = 200,
    not_after: str = "2027-01-01T00:00:00+00:00",
    findings: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "https": {
            "url": "https://a.test/",
            "status": status,
            "title": title,
            "tls": {"not_after": not_after},
        },
        "http": {"url": "http://a.test/", "error": "refused"},
        "findings": findings or [],
    }


def test_a_first_run_has_no_changes() -> None:
    assert compare(None, {"a.test": ("succeeded", report())}) == []


def test_nothing_changed_is_an_empty_list_even_when_counts_and_excerpts_differ() -> None:
    before = report(findings=[{"rule": "keyword", "pattern": "login", "count": 1}])
    after = report(findings=[{"rule": "keyword", "pattern": "login", "count": 7}])
    assert compare({"a.test": ("succeeded", before)}, {"a.test": ("succeeded", after)}) == []


def test_title_certificate_status_and_findings_changes_are_named() -> None:
    before = report(findings=[{"rule": "keyword", "pattern": "login", "count": 1}])
    after = report(
        title="Hacked",
        not_after="2027-06-01T00:00:00+00:00",
        findings=[{"rule": "tls_untrusted", "url": "https://a.test/"}],
    )
    changes = compare(
        {"a.test": ("succeeded", before), "b.test": ("succeeded", report())},
        {
            "a.test": ("succeeded", after),
            "b.test": ("failed", None),
            "c.test": ("succeeded", report()),
        },
    )
    assert changes == [
        {
            "domain": "a.test",
            "changed": {
                "title": {"before": "Home", "after": "Hacked"},
                "certificate_expires": {
                    "before": "2027-01-01T00:00:00+00:00",
                    "after": "2027-06-01T00:00:00+00:00",
                },
                "findings": {
                    "added": ["tls_untrusted:https://a.test/"],
                    "removed": ["keyword:login"],
                },
            },
        },
        {
            "domain": "b.test",
            "changed": {
                "status": {"before": "succeeded", "after": "failed"},
                "http_status": {"before": 200, "after": None},
                "title": {"before": "Home", "after": None},
                "certificate_expires": {"before": "2027-01-01T00:00:00+00:00", "after": None},
            },
        },
        {"domain": "c.test", "new": True},
    ]


def test_the_http_page_stands_in_when_https_failed() -> None:
    result = {"https": {"error": "refused"}, "http": {"status": 301, "title": "Moved"}}
    assert facts("succeeded", result)["title"] == "Moved"
    assert facts("succeeded", result)["http_status"] == 301
