"""Which database errors the engine redoes a step for: SQLite's lock timeout and PostgreSQL's serialization
failures, deadlocks and lost connections; not a constraint violation or a syntax error."""
from __future__ import annotations

import sqlite3

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from agency.engine.base import is_transient_db_error


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"pg error {sqlstate}")
        self.sqlstate = sqlstate


def _wrapped(orig: Exception, cls: type[DBAPIError] = OperationalError, invalidated: bool = False) -> DBAPIError:
    return cls("UPDATE projects ...", {}, orig, connection_invalidated=invalidated)


def test_the_transient_ones_are_redone() -> None:
    assert is_transient_db_error(_wrapped(sqlite3.OperationalError("database is locked")))
    for code in ("40001", "40P01", "08006", "57P01"):  # serialization, deadlock, connection lost, admin shutdown
        assert is_transient_db_error(_wrapped(_PgError(code), DBAPIError)), code
    assert is_transient_db_error(_wrapped(Exception("server closed the connection"), DBAPIError, invalidated=True))


def test_the_others_are_not() -> None:
    assert not is_transient_db_error(_wrapped(sqlite3.IntegrityError("UNIQUE constraint failed"), IntegrityError))
    assert not is_transient_db_error(_wrapped(_PgError("23505"), IntegrityError))  # unique violation
    assert not is_transient_db_error(_wrapped(_PgError("42601"), DBAPIError))  # syntax error
    assert not is_transient_db_error(_wrapped(sqlite3.OperationalError("no such table: projects")))
