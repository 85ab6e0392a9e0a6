"""The query parameters of the routes that answer one page of a list, and the page size a
request gets."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from shared.settings import Settings

# A newest-first list's page: 20 rows unless asked for more.
LimitQuery = Annotated[int, Query(ge=1, le=100)]
# A list read whole, or a batch's tasks: 100 rows unless asked for more.
LongLimitQuery = Annotated[int, Query(ge=1, le=1000)]
# The `next_cursor` of the previous page.
CursorQuery = Annotated[str | None, Query(max_length=200)]


def page_size(limit: int, settings: Settings) -> int:
    """The rows a page holds: what the client asked for, at most `SCAN_PAGE_SIZE_MAX`."""
    return min(limit, settings.page_size_max)
