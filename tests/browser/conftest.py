"""Browser tests run in Debian's Chromium; without it they are deselected, saying so once."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
_NOTE = pytest.StashKey[str]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    browser = [item for item in items if item.get_closest_marker("browser")]
    if not browser:
        return
    items[:] = [item for item in items if not item.get_closest_marker("browser")]
    config.hook.pytest_deselected(items=browser)
    config.stash[_NOTE] = (
        f"browser tests NOT run ({len(browser)} deselected): {CHROMIUM} is missing; "
        "`apt-get install chromium` to run them"
    )


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    note = config.stash.get(_NOTE, None)
    if note:
        terminalreporter.write_line(note, yellow=True, bold=True)
