"""Every Alembic revision follows docs/design.md's rules for a live database, read from its
source: what a rule forbids is found by reading the calls and SQL strings of `upgrade()`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

VERSIONS = Path(__file__).resolve().parents[3] / "shared" / "db" / "migrations" / "versions"
CREATE_INDEX_SQL = re.compile(r"\bCREATE\s+(UNIQUE\s+)?INDEX\b(?!\s+CONCURRENTLY)", re.I)
ADD_CONSTRAINT_SQL = re.compile(r"\bADD\s+CONSTRAINT\b(?![^;]*\bNOT\s+VALID\b)", re.I | re.S)
ALTER_TYPE_SQL = re.compile(r"\bALTER\s+COLUMN\s+\w+\s+(SET\s+DATA\s+)?TYPE\b", re.I)
SET_NOT_NULL_SQL = re.compile(r"\bSET\s+NOT\s+NULL\b", re.I)
# Constraint kinds Alembic adds in one step, validating every row under a lock that stops
# writes; raw SQL with NOT VALID and then VALIDATE instead.
ONE_STEP_CONSTRAINTS = ("create_foreign_key", "create_check_constraint", "create_unique_constraint")


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _op_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.attr if func.value.id == "op" else None
    return None


def _in_autocommit_block(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.With) and "autocommit_block" in ast.unparse(node.items[0]):
            return True
    return False


def _index_violations(
    call: ast.Call, new_tables: set[str], parents: dict[ast.AST, ast.AST]
) -> list[str]:
    table = call.args[1] if len(call.args) > 1 else _keyword(call, "table_name")
    on_new_table = isinstance(table, ast.Constant) and table.value in new_tables
    concurrent = _is_true(_keyword(call, "postgresql_concurrently"))
    if not on_new_table and not concurrent:
        return [f"line {call.lineno}: create_index on an existing table without CONCURRENTLY"]
    if concurrent and not _in_autocommit_block(call, parents):
        return [f"line {call.lineno}: CONCURRENTLY outside `autocommit_block()`"]
    return []


def _column_violations(call: ast.Call) -> list[str]:
    column = call.args[1] if len(call.args) > 1 else None
    if not isinstance(column, ast.Call):
        return []
    nullable = _keyword(column, "nullable")
    not_null = isinstance(nullable, ast.Constant) and nullable.value is False
    if not_null and _keyword(column, "server_default") is None:
        return [f"line {call.lineno}: a NOT NULL column without a constant server_default"]
    return []


def _alter_violations(call: ast.Call) -> list[str]:
    if _keyword(call, "type_") is not None:
        return [f"line {call.lineno}: alter_column type_ rewrites the table under a lock"]
    nullable = _keyword(call, "nullable")
    if isinstance(nullable, ast.Constant) and nullable.value is False:
        return [f"line {call.lineno}: SET NOT NULL scans the table under an exclusive lock"]
    return []


def _call_violations(
    call: ast.Call, new_tables: set[str], parents: dict[ast.AST, ast.AST]
) -> list[str]:
    name = _op_name(call)
    if name == "create_index":
        return _index_violations(call, new_tables, parents)
    if name in ONE_STEP_CONSTRAINTS:
        return [f"line {call.lineno}: op.{name} validates every row at once (NOT VALID first)"]
    if name == "add_column":
        return _column_violations(call)
    if name == "alter_column":
        return _alter_violations(call)
    return []


def _sql_violations(text: str, line: int) -> list[str]:
    found = []
    for pattern, why in (
        (CREATE_INDEX_SQL, "CREATE INDEX without CONCURRENTLY"),
        (ADD_CONSTRAINT_SQL, "ADD CONSTRAINT without NOT VALID"),
        (ALTER_TYPE_SQL, "a column type change"),
        (SET_NOT_NULL_SQL, "SET NOT NULL"),
    ):
        if pattern.search(text):
            found.append(f"line {line}: {why}")
    return found


def violations(source: str) -> list[str]:
    """What in `source`'s `upgrade()` (and the SQL strings of the module) breaks the rules."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    upgrade = next(
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "upgrade"
    )
    calls = [node for node in ast.walk(upgrade) if isinstance(node, ast.Call)]
    new_tables = {
        call.args[0].value
        for call in calls
        if _op_name(call) == "create_table" and isinstance(call.args[0], ast.Constant)
    }
    found = [v for call in calls for v in _call_violations(call, new_tables, parents)]
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            found += _sql_violations(value.value, node.lineno)
    for call in calls:
        if _op_name(call) == "execute" and call.args and isinstance(call.args[0], ast.Constant):
            found += _sql_violations(str(call.args[0].value), call.lineno)
    return found


REVISIONS = sorted(VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))


@pytest.mark.parametrize("path", REVISIONS, ids=[path.stem for path in REVISIONS])
def test_every_revision_is_safe_on_a_live_database(path: Path) -> None:
    assert violations(path.read_text()) == []


UNSAFE = """
from alembic import op
import sqlalchemy as sa
SQL = "CREATE INDEX ix_a ON tasks (a)"
CHECK = "ALTER TABLE tasks ADD CONSTRAINT ck CHECK (a > 0)"
def upgrade():
    op.create_index('ix_b', 'tasks', ['b'])
    op.create_index('ix_c', 'tasks', ['c'], postgresql_concurrently=True)
    op.create_foreign_key('fk', 'tasks', 'users', ['u'], ['id'])
    op.add_column('tasks', sa.Column('d', sa.Integer(), nullable=False))
    op.alter_column('tasks', 'e', nullable=False)
    op.execute("ALTER TABLE tasks ALTER COLUMN f TYPE bigint")
"""

SAFE = """
from alembic import op
import sqlalchemy as sa
FK = "ALTER TABLE tasks ADD CONSTRAINT fk FOREIGN KEY (u) REFERENCES users (id) NOT VALID"
def upgrade():
    op.create_table('fresh', sa.Column('id', sa.Integer()))
    op.create_index('ix_fresh', 'fresh', ['id'])
    op.add_column('tasks', sa.Column('d', sa.Integer(), nullable=False,
                                     server_default=sa.text('0')))
    op.execute(FK)
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE tasks VALIDATE CONSTRAINT fk")
        op.create_index('ix_c', 'tasks', ['c'], postgresql_concurrently=True)
"""


def test_the_rules_catch_each_unsafe_change() -> None:
    found = violations(UNSAFE)
    assert len(found) == 8, found


def test_the_rules_accept_the_online_ways_of_doing_the_same() -> None:
    assert violations(SAFE) == []
