"""The users aggregate: accounts and their API tokens (only hashes are stored). None of the
statements commits.

Idiom: SQLAlchemy expression language on the `User` model, built once at import; the upsert
of a token uses PostgreSQL's `INSERT ... ON CONFLICT` through the dialect's `insert`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import User


async def insert_user(session: AsyncSession, name: str, token_hash: str, is_admin: bool) -> User:
    user = User(name=name, token_hash=token_hash, is_admin=is_admin)
    session.add(user)
    await session.flush()
    return user


_ACTIVE_BY_TOKEN_HASH = select(User).where(
    User.token_hash == bindparam("hash"), User.revoked_at.is_(None)
)


async def get_active_user_by_token_hash(session: AsyncSession, token_hash: str) -> User | None:
    params = {"hash": token_hash}
    return (await session.execute(_ACTIVE_BY_TOKEN_HASH, params)).scalar_one_or_none()


async def get_user(session: AsyncSession, user_id: int) -> User | None:
    """The user with this id, revoked or not."""
    return await session.get(User, user_id)


_ALL = select(User).order_by(User.id)


async def list_users(session: AsyncSession) -> Sequence[User]:
    return (await session.execute(_ALL)).scalars().all()


_REVOKE = (
    update(User)
    .where(User.name == bindparam("user_name"), User.revoked_at.is_(None))
    .values(revoked_at=func.now())
    .returning(User.id)
)


async def revoke_user(session: AsyncSession, name: str) -> bool:
    return (await session.execute(_REVOKE, {"user_name": name})).first() is not None


_ROTATE = (
    update(User)
    .where(User.name == bindparam("user_name"), User.revoked_at.is_(None))
    .values(token_hash=bindparam("new_hash"))
    .returning(User.id)
)


async def rotate_token(session: AsyncSession, name: str, token_hash: str) -> bool:
    """Give an active user a new token hash (the old token stops working at commit); False
    when there is no active user by that name."""
    params = {"user_name": name, "new_hash": token_hash}
    return (await session.execute(_ROTATE, params)).first() is not None


# On the table, not the model: the ORM would read an INSERT with parameters as a bulk insert.
_NEW = insert(cast(Table, User.__table__)).values(
    name=bindparam("user_name"),
    token_hash=bindparam("new_hash"),
    is_admin=bindparam("admin"),
)
_SET_TOKEN = _NEW.on_conflict_do_update(
    index_elements=["name"],
    set_={
        "token_hash": _NEW.excluded.token_hash,
        "is_admin": _NEW.excluded.is_admin,
        "revoked_at": None,
    },
)


async def set_user_token(session: AsyncSession, name: str, token_hash: str, is_admin: bool) -> None:
    """Create the user, or give an existing one a new token (and un-revoke it)."""
    params = {"user_name": name, "new_hash": token_hash, "admin": is_admin}
    await session.execute(_SET_TOKEN, params)
