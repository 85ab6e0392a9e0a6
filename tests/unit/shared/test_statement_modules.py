"""Every module of statements in shared/db names its SQL idiom in its docstring, as
docs/design.md says it does."""

from __future__ import annotations

import ast
import pathlib

DB = pathlib.Path(__file__).resolve().parents[3] / "shared" / "db"
# Engines, the declarative base, migrations and outage classification hold no statements.
NOT_STATEMENTS = {"__init__", "base", "engine", "migrate", "models", "outage"}


def test_every_statement_module_names_its_idiom() -> None:
    unnamed = []
    for path in sorted(DB.glob("*.py")):
        if path.stem in NOT_STATEMENTS:
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if "Idiom:" not in docstring:
            unnamed.append(path.name)
    assert len(list(DB.glob("*.py"))) > len(NOT_STATEMENTS)
    assert not unnamed, f"name the SQL idiom in the docstring of: {unnamed}"
