"""rules_cost: what content rules cost on a 1 MB page, and what the event loop sees of them.

Standalone (no servers): `python -m bench.rules_cost`. Prints Markdown tables: the time of one
pattern over 1 MB of several texts (RE2 through `rules.apply_rules`, and Python's `re` for the
backtracking bomb), whole rule sets of 50 patterns, and the event loop's longest stall while a
rule set runs inline or on the rule threads. Figures are the median of `REPS` runs.
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import string
import time
from collections.abc import Callable
from typing import Any

from shared import patterns
from worker_service.scanner import rule_threads, rules

REPS = 3
PAGE_BYTES = 1_000_000
ORDINARY = [
    r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}",
    r"(?i)[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}",
    r"UA-\d{4,10}-\d{1,4}",
    r"G-[A-Z0-9]{10}",
    r"https?://[^\s\"'<>]+",
    r"(?i)<script[^>]*src=[\"']?([^\"' >]+)",
    r"\b\d{3}-\d{2}-\d{4}\b",
    r"(?i)wordpress|drupal|joomla",
    r"(?i)\bcasino\b",
    r"(?i)\w{20,}",
]
HOSTILE = [
    r"(x+x+)+y",
    r"(a|aa)*b",
    r".*.*.*=.*",
    r"x.*y|x",
    r"a[ab]{30}c",
    r"(?:[a-z]{1,30}\s?){30}QQ",
]


def texts() -> dict[str, str]:
    rng = random.Random(1)
    words = ["acme", "shop", "<div class='x'>", "</div>", "info@acme.test", "https://a.test/p"]
    html = " ".join(rng.choice(words + list(string.ascii_lowercase)) for _ in range(250_000))
    return {
        "html": html[:PAGE_BYTES],
        "x": "x" * PAGE_BYTES,
        "random a/b": "".join(rng.choice("ab") for _ in range(PAGE_BYTES)),
    }


def median_s(work: Callable[[], Any]) -> float:
    runs = []
    for _ in range(REPS):
        started = time.perf_counter()
        work()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def one_pattern_table(pages: dict[str, str]) -> list[str]:
    lines = ["| pattern | " + " | ".join(pages) + " |", "|---" * (len(pages) + 1) + "|"]
    for pattern in ORDINARY[:3] + HOSTILE:
        cells = []
        for text in pages.values():
            config = {"regexes": [pattern]}
            spent = median_s(lambda: rules.apply_rules(text, config, budget_s=60))  # noqa: B023
            cells.append(f"{spent * 1000:,.1f} ms")
        lines.append(f"| `{pattern}` | " + " | ".join(cells) + " |")
    return lines


def backtracking_table() -> list[str]:
    lines = ["| `re` on `(x+x+)+y`, n times 'x' | time |", "|---|---|"]
    bomb = re.compile(r"(x+x+)+y")
    for n in (16, 18, 20, 22):
        spent = median_s(lambda: bomb.search("x" * n))  # noqa: B023
        lines.append(f"| n = {n} | {spent * 1000:,.1f} ms |")
    return lines


def largest_search_table(pages: dict[str, str]) -> list[str]:
    """RE2's slow path at growing program sizes: one search each, capped by MAX_SEARCH_COST."""
    lines = ["| pattern (random a/b) | instructions | searched | time |", "|---|---|---|---|"]
    for pattern in (r"a[ab]{30}c", r"a[ab]{95}c", r"a[ab]{300}c", r"a[ab]{900}c"):
        size = patterns.compile_pattern(pattern).programsize
        text = pages["random a/b"]
        started = time.perf_counter()
        rules.apply_rules(text, {"regexes": [pattern]}, budget_s=60)
        spent = time.perf_counter() - started
        searched = min(len(text), rules.MAX_SEARCH_COST // size)
        lines.append(f"| `{pattern}` | {size} | {searched:,} B | {spent:,.2f} s |")
    return lines


def rule_set_table(pages: dict[str, str]) -> list[str]:
    sets = {
        "50 ordinary (10 patterns, 5 times)": ORDINARY * 5,
        "50 hostile (`a[ab]{30}c`)": [r"a[ab]{30}c"] * 50,
    }
    lines = ["| rule set | text | time (budget 2 s) | not applied |", "|---|---|---|---|"]
    for name, regexes in sets.items():
        for page_name in ("html", "random a/b"):
            text = pages[page_name]
            started = time.perf_counter()
            findings = rules.apply_rules(text, {"regexes": regexes}, budget_s=2)
            spent = time.perf_counter() - started
            skipped = sum(finding["rule"] == "rule_not_applied" for finding in findings)
            lines.append(f"| {name} | {page_name} | {spent:,.2f} s | {skipped} |")
    return lines


async def _loop_stall_s(run: Callable[[], Any]) -> tuple[float, float]:
    """The longest gap between 1 ms ticks of the loop while `run()` (awaited) works."""
    worst = 0.0
    stop = False

    async def tick() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    await run()
    spent = time.perf_counter() - started
    stop = True
    await ticker
    return spent, worst


def stall_table(pages: dict[str, str]) -> list[str]:
    text = pages["random a/b"]
    config = {"regexes": [r"a[ab]{30}c"] * 3}

    async def inline() -> None:
        rules.apply_rules(text, config, budget_s=60)

    async def threaded() -> None:
        await rule_threads.apply_rules(text, config, budget_s=60, not_after=time.monotonic() + 60)

    lines = ["| 3 times `a[ab]{30}c` over 1 MB | time | longest loop stall |", "|---|---|---|"]
    for name, run in (("on the event loop", inline), ("on a rule thread", threaded)):
        spent, stall = asyncio.run(_loop_stall_s(run))
        lines.append(f"| {name} | {spent * 1000:,.0f} ms | {stall * 1000:,.1f} ms |")
    return lines


def main() -> None:
    pages = texts()
    for table in (
        one_pattern_table(pages),
        backtracking_table(),
        largest_search_table(pages),
        rule_set_table(pages),
        stall_table(pages),
    ):
        print("\n".join(table), end="\n\n")


if __name__ == "__main__":
    main()
