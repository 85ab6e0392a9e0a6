"""docs/design.md stays true to the code: its tables of modules list every product module
and no file that does not exist, and its data model names every table, column and index."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from sqlalchemy import Index, Table

from shared.db import models  # noqa: F401  (registers the tables on Base.metadata)
from shared.db.base import Base

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"
PACKAGES = ("api_service", "relay_service", "worker_service", "shared", "scanctl")
# A table row whose first cell is one module path: "| `relay_service/relay.py` | ...".
MODULE_ROW = re.compile(r"^\| `(?P<path>[\w/]+\.py)` \|")


def has_code(path: Path) -> bool:
    """Anything beyond a docstring: a package's `__init__.py` that only names it has no job."""
    body = ast.parse(path.read_text()).body
    return any(
        not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body
    )


def product_modules() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if "/migrations/versions/" in relative:
                continue  # revisions: listed by Alembic, described by their own docstrings
            if path.name == "__init__.py" and not has_code(path):
                continue
            found.add(relative)
    return found


def tabled_modules() -> list[str]:
    return [
        match["path"]
        for line in DESIGN.read_text().splitlines()
        if (match := MODULE_ROW.match(line))
    ]


def test_every_module_is_in_the_table() -> None:
    missing = sorted(product_modules() - set(tabled_modules()))
    assert missing == [], f"add these to docs/design.md's module tables: {missing}"


def test_the_table_names_only_files_that_exist() -> None:
    rows = tabled_modules()
    gone = sorted(path for path in rows if not (ROOT / path).is_file())
    assert gone == [], f"docs/design.md names modules that do not exist: {gone}"
    assert sorted(path for path in set(rows) if rows.count(path) > 1) == []


def data_model() -> str:
    text = DESIGN.read_text()
    start = text.index("\n## Data model\n")
    return text[start : text.index("\n## ", start + 1)]


def section(doc: str, table: Table) -> str:
    """The data model's subsection whose heading names the table."""
    heading = re.search(rf"^### .*`{table.name}`.*$", doc, re.MULTILINE)
    assert heading, f"docs/design.md's data model has no section for `{table.name}`"
    end = doc.find("\n### ", heading.end())
    return doc[heading.start() : end if end >= 0 else len(doc)]


def test_every_table_column_and_index_is_in_the_data_model() -> None:
    doc = data_model()
    unnamed = []
    for table in Base.metadata.sorted_tables:
        text = section(doc, table)
        names = [column.name for column in table.columns]
        names += [str(index.name) for index in table.indexes if isinstance(index, Index)]
        unnamed += [f"{table.name}.{name}" for name in names if f"`{name}`" not in text]
    assert unnamed == [], f"docs/design.md's data model does not name: {unnamed}"


def test_the_trigger_that_writes_deliveries_is_named_beside_them() -> None:
    deliveries = section(data_model(), Base.metadata.tables["deliveries"])
    assert "`task_finished_callbacks`" in deliveries
    revisions = (ROOT / "shared" / "db" / "migrations" / "versions").glob("*.py")
    assert any("CREATE TRIGGER task_finished_callbacks" in path.read_text() for path in revisions)


README_ROW = re.compile(r"^\| `(?P<folder>[a-z_]+)/` \| (?P<text>.*) \|$")


def test_the_readme_map_names_only_modules_that_exist() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Map of the code")
    gone = []
    for line in text[start : text.index("\n## ", start + 1)].splitlines():
        match = README_ROW.match(line)
        if match and match["folder"] in PACKAGES:
            folder = ROOT / match["folder"]
            for name in re.findall(r"`([\w/]+\.py)`", match["text"]):
                if not any(folder.rglob(Path(name).name)):
                    gone.append(f"{match['folder']}/{name}")
    assert gone == [], f"README's map of the code names modules that do not exist: {gone}"


# "`relay_service/relay.py`, `Relay.run_once`": a file, then a function or method in it.
PLACE = re.compile(r"`(?P<path>[\w/]+\.py)`, `(?P<name>[\w.]+)`")


def test_where_to_find_names_functions_that_exist() -> None:
    text = DESIGN.read_text()
    start = text.index("\n## Where to find\n")
    places = PLACE.findall(text[start : text.index("\n## ", start + 1)])
    assert len(places) >= 5
    wrong = []
    for path, name in places:
        source = ROOT / path
        defined = re.compile(rf"^\s*(async def|def|class) {re.escape(name.split('.')[-1])}\b", re.M)
        if not source.is_file() or not defined.search(source.read_text()):
            wrong.append(f"{path}: {name}")
    assert wrong == [], f"docs/design.md's 'Where to find' names what is not there: {wrong}"
