"""A command group that imports a subcommand's module only when that subcommand is used.

`scanctl --help`, `--version` and a mistyped command then cost Python and Typer alone; the
libraries a command needs (SQLAlchemy, Redis, httpx) are imported by the commands that run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class LazyCommand:
    """A subcommand at `module:attribute` (a Typer app or a command function), and the first
    paragraph of its own help, which the parent lists without importing the module."""

    target: str
    help: str


# Typer's context and help formatter come from click, or from the copy of click that newer
# Typer versions vendor: typed loosely so the group works with both.
Command = Any


class _CommandTable(MutableMapping[str, Command]):
    """Commands by name in the order declared; a lazy one is built on its first lookup."""

    def __init__(
        self,
        lazy: Mapping[str, LazyCommand],
        eager: Mapping[str, Command],
        build: Callable[[str, LazyCommand], Command],
    ) -> None:
        self._lazy = dict(lazy)
        self._built: dict[str, Command] = dict(eager)
        self._build = build

    def built(self, name: str) -> Command | None:
        return self._built.get(name)

    def __contains__(self, name: object) -> bool:
        # Mapping's own test would look the command up, and so import its module.
        return name in self._lazy or name in self._built

    def get(self, name: str, default: Command | None = None) -> Command | None:
        # Mapping's own `get` would take a KeyError raised while importing a command's module
        # for an unknown command.
        if name not in self:
            return default
        return self[name]

    def __getitem__(self, name: str) -> Command:
        if name not in self._built:
            self._built[name] = self._build(name, self._lazy[name])
        return self._built[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        if self._lazy.pop(name, None) is None and self._built.pop(name, None) is None:
            raise KeyError(name)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        yield from self._lazy
        yield from (name for name in self._built if name not in self._lazy)

    def __len__(self) -> int:
        return len(self._lazy.keys() | self._built.keys())


class LazyGroup(TyperGroup):
    """A Typer group whose `lazy_commands` are imported and built when first looked up.

    Subclasses set `lazy_commands`; help, option parsing, errors and exit codes are Typer's own,
    because each command is built by Typer exactly as `add_typer`/`command` would build it.
    """

    lazy_commands: ClassVar[Mapping[str, LazyCommand]] = {}

    def __init__(self, *, commands: Mapping[str, Command] | None = None, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _CommandTable(self.lazy_commands, commands or {}, self._build)
        self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def get_command(self, ctx: Any, cmd_name: str) -> Command | None:
        if self._listing and cmd_name in self.lazy_commands:
            table = self.commands
            assert isinstance(table, _CommandTable)
            # The listing needs a name and a help line; a stand-in gives both without an import.
            return table.built(cmd_name) or TyperCommand(
                name=cmd_name, help=self.lazy_commands[cmd_name].help
            )
        return self.commands.get(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        # Both of Typer's help formats (plain and rich) list commands through get_command.
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def _build(self, name: str, lazy: LazyCommand) -> Command:
        module_name, _, attribute = lazy.target.partition(":")
        target = getattr(importlib.import_module(module_name), attribute)
        # A parent built with this group's settings, holding only this command: Typer then builds
        # it as it would in the whole tree (help format, suggestions, option parsing).
        parent = typer.Typer(
            rich_markup_mode=self.rich_markup_mode,
            suggest_commands=self.suggest_commands,
            add_completion=False,
        )
        parent.callback()(_no_options)
        if isinstance(target, typer.Typer):
            parent.add_typer(target, name=name)
        else:
            parent.command(name)(target)
        group = typer.main.get_command(parent)
        assert isinstance(group, TyperGroup)
        return group.commands[name]


def _no_options() -> None:
    """The holder's callback: it makes Typer build a group, whatever it holds."""
