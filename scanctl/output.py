"""How scanctl shows rows: JSON-ready dicts for --json, and readable rich renderables."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

# The models bring SQLAlchemy, which `scanctl scan` (HTTP only) never needs.
if TYPE_CHECKING:
    from shared.db.models import OutboxMessage, Task

MAX_TEXT_CHARS = 200


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def short_time(value: datetime | None) -> str:
    """`2026-11-28 01:54:25` in UTC, for tables."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def task_json(task: Task, owner: str) -> dict[str, Any]:
    return {
        "id": str(task.id),
        "user": owner,
        "target_domain": task.target_domain,
        "status": task.status,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "error": task.error,
        "config": task.config,
        "result": task.result,
        "idempotency_key": task.idempotency_key,
        "lease_owner": task.lease_owner,
        "lease_expires_at": iso(task.lease_expires_at),
        "created_at": iso(task.created_at),
        "updated_at": iso(task.updated_at),
        "queued_at": iso(task.queued_at),
        "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at),
    }


def outbox_json(row: OutboxMessage, *, with_payload: bool) -> dict[str, Any]:
    from shared.outbox_admin import outbox_state

    data: dict[str, Any] = {
        "id": row.id,
        "state": outbox_state(row),
        "message_id": str(row.message_id),
        "actor": row.actor,
        "queue": row.queue,
        "task_id": str(row.task_id) if row.task_id else None,
        "created_at": iso(row.created_at),
        "available_at": iso(row.available_at),
        "publish_attempts": row.publish_attempts,
        "last_error": row.last_error,
        "published_at": iso(row.published_at),
        "dead_at": iso(row.dead_at),
    }
    if with_payload:
        data["payload"] = row.payload
    return data


def _scalar(value: object) -> str:
    text = "—" if value is None else str(value)
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def _inline(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(_scalar(item) for item in value) if value else "—"
    return "—" if isinstance(value, dict) else _scalar(value)


def _branches(value: object) -> bool:
    """Non-empty dicts, and lists holding containers, get their own branch."""
    if isinstance(value, dict):
        return bool(value)
    return isinstance(value, list) and any(isinstance(item, dict | list) for item in value)


def _grow(tree: Tree, value: dict[str, Any] | list[Any]) -> None:
    entries = value.items() if isinstance(value, dict) else enumerate(value, start=1)
    for key, item in entries:
        label = f"[bold]{escape(str(key))}[/bold]"
        if _branches(item):
            _grow(tree.add(label), item)
        else:
            tree.add(f"{label}: {escape(_inline(item))}", highlight=False)


def result_tree(title: str, result: dict[str, Any]) -> Tree:
    """A scan report as a tree: sections as branches, short lists inline."""
    tree = Tree(title, guide_style="dim")
    _grow(tree, result)
    return tree


def facts_table() -> Table:
    """A table of one thing's facts: a name in bold, then its value, folded when long; no
    header, no box."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    return table


def task_view(data: dict[str, Any]) -> Group:
    """A task's facts as a short table, then its report as a tree."""
    table = facts_table()
    for name in ("id", "user", "target_domain", "status", "attempts", "created_at", "finished_at"):
        if data.get(name) is not None:
            table.add_row(name, escape(str(data[name])))
    if data.get("error"):
        table.add_row("error", f"[red]{escape(str(data['error']))}[/red]")
    result = data.get("result")
    if isinstance(result, dict):
        return Group(table, result_tree("[bold]report[/bold]", result))
    return Group(table)
