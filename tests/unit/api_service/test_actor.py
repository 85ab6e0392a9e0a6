"""Who acts on a task: the owner is bound to their own tasks, an administrator is not."""

from __future__ import annotations

import pytest

from api_service.task_service import Actor
from shared.db.models import User


def user(user_id: int, *, is_admin: bool) -> User:
    return User(id=user_id, name=f"u{user_id}", token_hash="x", is_admin=is_admin)


def test_an_owner_acts_only_on_their_own_tasks() -> None:
    actor = Actor.owner(user(7, is_admin=True))
    assert (actor.owner_id, actor.describe()) == (7, "user:7")


def test_an_administrator_acts_on_anyones_task_and_is_named_so() -> None:
    actor = Actor.admin(user(3, is_admin=True))
    assert (actor.owner_id, actor.describe()) == (None, "admin:3")


def test_only_an_administrator_can_act_as_one() -> None:
    with pytest.raises(ValueError, match="administrator"):
        Actor.admin(user(4, is_admin=False))
