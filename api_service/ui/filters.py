"""The task list's filters, from query parameters to a `TaskFilter` (and back to a URL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode

from api_service.ui.reads import TaskFilter
from shared.db.models import TaskStatus

MAX_FIELD_CHARS = 200


@dataclass(frozen=True)
class TaskQuery:
    """The filter form as typed (shown back in the form) and what it means."""

    status: str = ""
    user: str = ""
    domain: str = ""
    since: str = ""
    until: str = ""
    problems: list[str] = field(default_factory=list)

    def to_filter(self) -> TaskFilter:
        return TaskFilter(
            status=self.status or None,
            user_name=self.user or None,
            domain_contains=self.domain.lower() or None,
            created_from=parse_time(self.since),
            created_to=parse_time(self.until),
        )

    def url(self, before: str | None = None) -> str:
        """The list's URL with these filters (and a page cursor)."""
        params = {
            name: value
            for name, value in (
                ("status", self.status),
                ("user", self.user),
                ("domain", self.domain),
                ("since", self.since),
                ("until", self.until),
                ("before", before or ""),
            )
            if value
        }
        return "/ui/tasks" + (f"?{urlencode(params)}" if params else "")


def parse_time(value: str) -> datetime | None:
    """`2026-11-28T01:54` (a datetime-local field) or any ISO time; naive means UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read_query(status: str, user: str, domain: str, since: str, until: str) -> TaskQuery:
    """Each field trimmed and bounded; unusable ones dropped with a problem to show."""
    status, user, domain, since, until = (
        value.strip()[:MAX_FIELD_CHARS] for value in (status, user, domain, since, until)
    )
    problems = []
    if status and status not in {s.value for s in TaskStatus}:
        problems.append(f"unknown state {status!r}: ignored")
        status = ""
    for label, value in (("from", since), ("until", until)):
        if value and parse_time(value) is None:
            problems.append(f"{label} is not a date and time: ignored")
    since = since if parse_time(since) else ""
    until = until if parse_time(until) else ""
    return TaskQuery(status, user, domain, since, until, problems)
