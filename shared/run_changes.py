"""What changed for each domain between two runs of a schedule, from the scanner's reports.

Compared per domain: the task's status, the home page's HTTP status and title (the https page
when there is one, as the scanner prefers), the certificate's expiry (`not_after` of the https
page's TLS facts) and the findings (by rule and pattern; counts and excerpts vary from run to
run and are not compared).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PAGE_PREFERENCE = ("https", "http")
FIELDS = ("status", "http_status", "title", "certificate_expires")

Outcome = tuple[str, dict[str, Any] | None]


def _page(result: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for scheme in PAGE_PREFERENCE:
        section = result.get(scheme)
        if isinstance(section, Mapping) and "status" in section:
            return section
    return None


def _finding_key(finding: Mapping[str, Any]) -> str:
    rule = str(finding.get("rule", "?"))
    detail = finding.get("pattern", finding.get("url"))
    return f"{rule}:{detail}" if detail is not None else rule


def facts(status: str, result: Mapping[str, Any] | None) -> dict[str, Any]:
    """The compared facts of one domain's scan."""
    report = result or {}
    page = _page(report)
    https = report.get("https")
    tls = https.get("tls") if isinstance(https, Mapping) else None
    findings = report.get("findings") or []
    return {
        "status": status,
        "http_status": page.get("status") if page else None,
        "title": page.get("title") if page else None,
        "certificate_expires": tls.get("not_after") if isinstance(tls, Mapping) else None,
        "findings": sorted({_finding_key(f) for f in findings if isinstance(f, Mapping)}),
    }


def domain_changes(before: Outcome, after: Outcome) -> dict[str, Any]:
    """The fields that differ, each as {before, after}; findings as {added, removed}."""
    old, new = facts(*before), facts(*after)
    changed: dict[str, Any] = {
        name: {"before": old[name], "after": new[name]} for name in FIELDS if old[name] != new[name]
    }
    added = sorted(set(new["findings"]) - set(old["findings"]))
    removed = sorted(set(old["findings"]) - set(new["findings"]))
    if added or removed:
        changed["findings"] = {"added": added, "removed": removed}
    return changed


def compare(
    previous: Mapping[str, Outcome] | None, current: Mapping[str, Outcome]
) -> list[dict[str, Any]]:
    """One entry per domain of `current` that differs from `previous` (a domain the previous
    run did not scan is `new`); an empty list for a first run or when nothing changed."""
    if previous is None:
        return []
    changes: list[dict[str, Any]] = []
    for domain in sorted(current):
        if domain not in previous:
            changes.append({"domain": domain, "new": True})
            continue
        changed = domain_changes(previous[domain], current[domain])
        if changed:
            changes.append({"domain": domain, "changed": changed})
    return changes
