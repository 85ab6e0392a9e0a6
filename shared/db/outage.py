"""Telling a database outage (down, restarting, connection lost) from a bug or bad data."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, InternalError, OperationalError

# SQLSTATE classes of a server going away: 08 connection exception, 57 operator intervention
# ("the database system is shutting down", "... is starting up", admin shutdown).
OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "57"})


def is_outage(exc: BaseException) -> bool:
    """True if `exc` says the database could not be reached or dropped the connection, so the
    same statement may well succeed shortly; False for errors that trying again cannot fix."""
    if isinstance(exc, OSError | OperationalError | InterfaceError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(exc, InternalError):
        # No SQLSTATE: the driver lost track of a connection the server cut mid-statement.
        return sqlstate is None
    return isinstance(sqlstate, str) and sqlstate[:2] in OUTAGE_SQLSTATE_CLASSES
