"""Content rules run on the rule threads, never on the event loop's thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from worker_service.scanner import rule_threads, rules

PAGE = "Welcome to ACME Shop. acme sells anvils."


async def test_rules_run_on_a_rule_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    original = rules.apply_rules

    def recording(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        seen.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(rules, "apply_rules", recording)

    findings = await rule_threads.apply_rules(
        PAGE, {"regexes": ["sells"]}, budget_s=2, not_after=time.monotonic() + 10
    )

    assert [finding["rule"] for finding in findings] == ["regex"]
    assert len(seen) == 1
    assert seen[0].startswith("scan-rules")
    assert seen[0] != threading.current_thread().name


async def test_no_rules_means_no_thread_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rule_threads, "_pool", None)

    assert await rule_threads.apply_rules(PAGE, {}, budget_s=2, not_after=0) == []


@pytest.fixture
def busy_rule_threads() -> Iterator[None]:
    """Every rule thread held until the test ends."""
    release = threading.Event()
    started = [threading.Event() for _ in range(rule_threads.RULE_THREADS)]

    def hold(ready: threading.Event) -> None:
        ready.set()
        release.wait(30)

    pool = rule_threads._pool()
    holders = [pool.submit(hold, ready) for ready in started]
    for ready in started:
        assert ready.wait(10)
    try:
        yield
    finally:
        release.set()
        for holder in holders:
            holder.result(10)


@pytest.mark.usefixtures("busy_rule_threads")
async def test_rules_still_queued_at_the_scan_deadline_are_reported_not_applied() -> None:
    config = {"keywords": ["acme"], "regexes": ["sells"]}

    findings = await rule_threads.apply_rules(
        PAGE, config, budget_s=2, not_after=time.monotonic() + 0.05
    )

    reason = "scan time limit reached before the rules could run"
    assert findings == [
        {"rule": "rule_not_applied", "kind": "keyword", "pattern": "acme", "reason": reason},
        {"rule": "rule_not_applied", "kind": "regex", "pattern": "sells", "reason": reason},
    ]
