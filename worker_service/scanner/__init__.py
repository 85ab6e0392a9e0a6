"""Scanning one domain: DNS records, the home page over each scheme behind the SSRF guard with
TLS facts and security headers, and the task's content rules.

The whole scan is bounded by `total_timeout_s`; each DNS query and HTTP hop by its own limit,
the content rules by `rules_budget_s` (on a rule thread, never on the event loop).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shared.settings import Settings
from worker_service.scanner import http, resolver, rule_threads
from worker_service.scanner.budget import Budget
from worker_service.scanner.storable import storable

# Content rules read the HTTPS page when there is one: it is what visitors are sent to.
PAGE_PREFERENCE = ("https", "http")


def _tls_findings(fetches: dict[str, http.HomePage | http.FetchFailure]) -> list[dict[str, Any]]:
    findings = []
    for fetch in fetches.values():
        facts = fetch.tls or {}
        if facts.get("trusted") is False:
            findings.append(
                {"rule": "tls_untrusted", "url": fetch.url, "detail": facts.get("verify_error")}
            )
    return findings


async def scan_domain(domain: str, config: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A JSON-serialisable report on `domain`; problems of the target are findings, not errors.

    `domain` is normalised (IDNA ASCII, lower-case); `config` holds `keywords` and `regexes`.
    The report has `dns`, one section per configured scheme (`http`, `https`), `findings`
    (content rules on the preferred page, and untrusted certificates) and `rules_applied_to`.
    Every string in it is storable (`storable`): whatever the target sends, the report is.
    """
    started = time.monotonic()
    budget = Budget.start(settings.total_timeout_s)
    records = await resolver.lookup_records(
        domain, settings, lifetime_s=budget.cap(settings.dns_timeout_s)
    )
    fetched = await asyncio.gather(
        *(
            http.fetch(domain, scheme, settings, known=records.resolution, budget=budget)
            for scheme in settings.schemes
        )
    )
    fetches = dict(zip(settings.schemes, fetched, strict=True))
    pages = [fetches[scheme] for scheme in PAGE_PREFERENCE if scheme in fetches]
    page = next((page for page in pages if isinstance(page, http.HomePage)), None)
    findings = []
    if page is not None:
        findings = await rule_threads.apply_rules(
            page.text, config, budget_s=settings.rules_budget_s, not_after=budget.deadline
        )
    report = {
        "domain": domain,
        "dns": records.to_json(),
        **{scheme: fetch.to_json() for scheme, fetch in fetches.items()},
        "findings": findings + _tls_findings(fetches),
        "rules_applied_to": page.url if page is not None else None,
        "elapsed_ms": int((time.monotonic() - started) * 1000),
    }
    cleaned: dict[str, Any] = storable(report)
    return cleaned
