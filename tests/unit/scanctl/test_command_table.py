"""`scanctl --help` lists every command with its own help line, without importing any."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from typing import ClassVar

import pytest
import typer
import typer.main
from typer.core import TyperGroup

from scanctl.lazy_commands import LazyCommand, LazyGroup
from scanctl.main import ScanctlCommands, app


def _group() -> TyperGroup:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    return group


def _listed(help_text: str) -> list[str]:
    section = help_text.split("Commands:\n", 1)[1]
    return [
        line.split()[0] for line in section.splitlines() if line.startswith("  ") and line[2] != " "
    ]


def test_help_lists_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scanctl.main", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "100"},
    )
    expected = list(ScanctlCommands.lazy_commands)
    assert _listed(done.stdout) == expected
    assert {"status", "scan", "migrate", "dev", "users", "tasks", "schedules"} <= set(expected)


def test_each_listed_help_line_is_the_commands_own() -> None:
    group = _group()
    ctx = typer.Context(group, info_name="scanctl", terminal_width=100)
    listed = group.get_help(ctx)
    for name in group.list_commands(ctx):
        assert group.get_command(ctx, name) is not None, name
    # Every command is now built from its module: the same listing proves the stand-ins true.
    assert group.get_help(ctx) == listed


def test_a_command_built_on_demand_parses_its_options() -> None:
    group = _group()
    ctx = typer.Context(group, info_name="scanctl")
    tasks = group.get_command(ctx, "tasks")
    assert isinstance(tasks, TyperGroup)
    assert "list" in tasks.list_commands(ctx)
    assert group.get_command(ctx, "nosuch") is None


class _Broken(LazyGroup):
    lazy_commands: ClassVar[Mapping[str, LazyCommand]] = {
        "broken": LazyCommand("scanctl.no_such_module:app", "A command whose module is gone.")
    }


def test_a_command_is_imported_when_looked_up_and_not_before() -> None:
    group = _Broken(name="scanctl", rich_markup_mode=None)
    ctx = typer.Context(group, info_name="scanctl")
    assert "broken" in group.commands
    assert group.list_commands(ctx) == ["broken"]
    assert "A command whose module is gone." in group.get_help(ctx)
    # A module that fails to import is a loud error, never taken for an unknown command.
    with pytest.raises(ModuleNotFoundError):
        group.get_command(ctx, "broken")
