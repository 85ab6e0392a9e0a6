"""Transactions owned in sight: `single_statement` leaves no mode behind on the session, a
block refuses to start inside a transaction already open, and operator actions commit
nothing of their own."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import callback_admin, outbox_admin
from shared.db import users
from shared.db.engine import single_statement
from shared.db.models import Delivery, User
from tests.helpers import make_user


class Undone(Exception):
    """Raised inside a transaction to roll it back."""


async def user_names(sessionmaker: async_sessionmaker[AsyncSession]) -> set[str]:
    async with sessionmaker() as session:
        return set((await session.execute(select(User.name))).scalars())


async def insert_two_then_fail(session: AsyncSession) -> None:
    async with session.begin():
        await users.insert_user(session, "first", "hash-first", False)
        await users.insert_user(session, "second", "hash-second", False)
        raise Undone


async def test_a_transaction_after_a_single_statement_read_rolls_back_whole(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as session:
        async with single_statement(session):
            assert await users.get_user(session, 1) is None
        assert not session.in_transaction()
        # Were the read's autocommit still on, the first insert would stay committed.
        with pytest.raises(Undone):
            await insert_two_then_fail(session)
    assert await user_names(sessionmaker) == set()


async def test_a_single_statement_write_commits_and_leaves_no_transaction_open(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as session:
        async with single_statement(session):
            await users.insert_user(session, "alice", "hash-alice", False)
        assert not session.in_transaction()
        assert await user_names(sessionmaker) == {"alice"}


async def test_a_block_refuses_a_session_a_read_left_in_a_transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as session:
        await session.execute(text("SELECT 1"))
        with pytest.raises(InvalidRequestError):
            async with single_statement(session):
                await users.insert_user(session, "alice", "hash-alice", False)
    assert await user_names(sessionmaker) == set()


async def add_dead_delivery(sessionmaker: async_sessionmaker[AsyncSession], user_id: int) -> int:
    async with sessionmaker() as session, session.begin():
        row_id: int = (
            await session.execute(
                text(
                    "INSERT INTO deliveries (delivery_id, user_id, url, payload, dead_at) "
                    "VALUES (:d, :u, 'https://hooks.example.com/x', '{}', now()) RETURNING id"
                ),
                {"d": uuid.uuid4(), "u": user_id},
            )
        ).scalar_one()
    return row_id


async def replay_both_then_fail(session: AsyncSession, row_id: int) -> None:
    async with session.begin():
        assert await callback_admin.replay_dead(session, [row_id]) == 1
        assert await outbox_admin.replay_dead(session, None) == []
        raise Undone


async def test_operator_replays_run_in_the_callers_transaction_and_commit_nothing_alone(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    user, _ = await make_user(sessionmaker, "alice")
    row_id = await add_dead_delivery(sessionmaker, user.id)
    async with sessionmaker() as session:
        with pytest.raises(Undone):
            await replay_both_then_fail(session, row_id)
    async with sessionmaker() as session:
        dead = select(func.count()).where(Delivery.dead_at.is_not(None))
        assert (await session.execute(dead)).scalar_one() == 1
    async with sessionmaker() as session, session.begin():
        assert await callback_admin.replay_dead(session, [row_id]) == 1
    async with sessionmaker() as session:
        assert (await session.execute(dead)).scalar_one() == 0
