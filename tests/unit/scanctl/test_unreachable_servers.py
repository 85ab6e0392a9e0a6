"""A server out of reach is one line naming the server and the setting to check."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from scanctl.common import _unreachable


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            RedisConnectionError("refused"),
            "Redis is unreachable (ConnectionError); check REDIS_URL",
        ),
        (
            OperationalError("SELECT 1", {}, Exception("gone")),
            "the database is unreachable (OperationalError); check DATABASE_URL",
        ),
        (
            ConnectionRefusedError(111, "refused"),
            "the database is unreachable (ConnectionRefusedError); check DATABASE_URL",
        ),
    ],
    ids=["redis", "sqlalchemy", "socket"],
)
def test_a_client_error_names_the_server_and_its_setting(error: Exception, message: str) -> None:
    assert _unreachable(error) == message


def test_any_other_error_is_not_taken_for_an_unreachable_server() -> None:
    assert _unreachable(ValueError("a bug")) is None
