"""Reading one of the caller's rows by its id: another client's row answers 404 exactly as a
missing one does, so ids reveal nothing."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.engine import single_statement
from shared.errors import NotFound

T = TypeVar("T")
# A statement reading the row `(user id, row id)` names, None when the user has no such row.
ReadOwned = Callable[[AsyncSession, int, uuid.UUID], Awaitable[T | None]]


async def read_owned(
    session: AsyncSession, read: ReadOwned[T], user_id: int, row_id: uuid.UUID, *, kind: str
) -> T:
    """User `user_id`'s `kind` row, read in a statement of its own; NotFound naming
    `<kind>_id` when it is missing or another user's."""
    async with single_statement(session):
        row = await read(session, user_id, row_id)
    if row is None:
        raise NotFound(f"no such {kind}", field=f"{kind}_id")
    return row
