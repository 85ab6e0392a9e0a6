"""Statements over many rows at once: each field of the rows' dataclass is bound, under its
own name, as the array of its values, and the statement unnests the arrays side by side.

Idiom: no statement of its own; it binds the parameters of other modules' `text()`
statements built at import (`schedules.insert_runs`, `schedules.advance`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import Executable

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def column_arrays(rows: Sequence[DataclassInstance]) -> dict[str, list[object]]:
    """One list per field of the rows' dataclass, by field name, the values in row order."""
    names = [field.name for field in dataclasses.fields(rows[0])] if rows else []
    return {name: [getattr(row, name) for row in rows] for name in names}


async def execute_for_rows(
    session: AsyncSession, statement: Executable, rows: Sequence[DataclassInstance]
) -> None:
    """Run `statement` once for all `rows` (see `column_arrays`); nothing at all for none."""
    if rows:
        await session.execute(statement, column_arrays(rows))
