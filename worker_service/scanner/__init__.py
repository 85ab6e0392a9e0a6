"""Scanning one domain: DNS, the home page behind the SSRF guard, and the task's rules."""

from __future__ import annotations

from typing import Any

from shared.settings import Settings
from worker_service.scanner import http, resolver, rules


async def scan_domain(domain: str, config: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A JSON-serialisable report on `domain`; problems of the target are findings, not errors.

    `domain` is normalised (IDNA ASCII, lower-case); `config` holds `keywords` and `regexes`.
    """
    resolution = await resolver.resolve_host(domain, settings)
    fetched = await http.fetch_home_page(domain, settings, known=resolution)
    findings = rules.apply_rules(fetched.text, config) if isinstance(fetched, http.HomePage) else []
    return {
        "domain": domain,
        "dns": resolution.to_json(),
        "http": fetched.to_json(),
        "findings": findings,
    }
