"""Which database errors are an outage worth retrying, and which are not."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    ProgrammingError,
)

from shared.db.outage import is_outage


class DriverError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def wrapped(kind: type[DBAPIError], sqlstate: str | None, invalidated: bool = False) -> DBAPIError:
    return kind("SELECT 1", None, DriverError(sqlstate), connection_invalidated=invalidated)


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError("no socket"),
        ConnectionRefusedError(),
        wrapped(OperationalError, None),
        wrapped(InterfaceError, None),
        wrapped(DBAPIError, "57P03"),  # the database system is starting up / shutting down
        wrapped(DBAPIError, "57P01"),  # terminating connection due to administrator command
        wrapped(DBAPIError, "08006"),  # connection failure
        wrapped(DBAPIError, None, invalidated=True),
        wrapped(InternalError, None),  # the driver lost track of a cut connection
    ],
)
def test_a_database_going_away_is_an_outage(error: BaseException) -> None:
    assert is_outage(error)


@pytest.mark.parametrize(
    "error",
    [
        wrapped(IntegrityError, "23505"),
        wrapped(ProgrammingError, "42P01"),
        wrapped(DBAPIError, "22021"),  # bad byte sequence: the data, not the server
        wrapped(InternalError, "XX000"),  # a server-side internal error
        ValueError("not a database error"),
    ],
)
def test_errors_that_a_retry_cannot_fix_are_not(error: BaseException) -> None:
    assert not is_outage(error)
