"""SQLite on the event loop's own thread, for SQLAlchemy's ``sqlite+aiosqlite`` dialect.

aiosqlite runs every call (cursor, execute, fetch, close, commit) on a worker
thread and wakes the loop for each result: on this project's small statements
that hop costs several times the statement itself (measured in ``bench/``: about
1 ms of CPU per ORM statement through aiosqlite, 0.2 ms inline). SQLite in WAL
mode with ``synchronous=NORMAL`` answers these statements in microseconds without
an fsync, so :class:`InlineConnection` runs them directly, keeping aiosqlite's
API (the dialect and SQLAlchemy's asyncio layer are unchanged).

One thing must not run inline: SQLite's busy wait. Two pooled connections of one
process share the loop; if one holds the write lock across an ``await`` and the
other waited inside ``sqlite3`` for it, the loop (and so the lock holder) would
stop. So the connection is opened with ``timeout=0`` and a busy or locked answer
is retried here with ``asyncio.sleep`` (the holder runs meanwhile) until the
busy timeout, after which it raises SQLite's own "database is locked" error.
``SQLITE_BUSY_SNAPSHOT`` (a read transaction that can no longer become a write
one) is raised at once, since waiting cannot cure it.

The loop still gets a turn after every statement, commit and rollback (an
``asyncio.sleep(0)``), the points where aiosqlite's hop suspended the caller: the
code keeps the scheduling it was written for, and under load (100 projects at
once in ``bench/``) the loop stays fair: event-loop lag p99 about 12 ms with
these yields against 140 ms without.

Nor does a connection checkpoint the WAL (``wal_autocheckpoint=0``, set in
:mod:`agency.db.session`): a checkpoint fsyncs, which on a slow disk would stop
the loop for as long. ``Database.start_checkpoints`` checkpoints from a worker
thread every 2 s instead (``TRUNCATE``: writers on the loop wait for it with the
same yielding busy wait, and the WAL is emptied, so it cannot grow under load).
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import aiosqlite

__all__ = ["InlineConnection", "inline_creator"]

_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_BUSY_SNAPSHOT = 517  # SQLITE_BUSY | (2 << 8)
_YIELD_AFTER = frozenset({"execute", "executemany", "commit", "rollback"})
_FIRST_WAIT = 0.001
_MAX_WAIT = 0.05


def _retryable(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:  # pragma: no cover - Python < 3.11
        return "locked" in str(error) or "busy" in str(error)
    return code != _BUSY_SNAPSHOT and (code & 0xFF) in _BUSY_CODES


class _InlineQueue:
    """Stands in for aiosqlite's queue to its worker thread: runs each call at once."""

    @staticmethod
    def put_nowait(item: tuple[asyncio.Future | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting caller, as aiosqlite does
            if future is not None and not future.done():
                future.set_exception(e)
            return
        if future is not None and not future.done():
            future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection without a thread: every call runs on the caller's (the loop's) thread."""

    def __init__(self, connector: Callable[[], sqlite3.Connection], *, busy_timeout: float, iter_chunk_size: int = 64) -> None:
        super().__init__(connector, iter_chunk_size)
        self._tx = _InlineQueue()  # type: ignore[assignment]
        self._busy_timeout = busy_timeout

    def __await__(self):  # noqa: ANN204 - as aiosqlite's, minus starting the thread
        return self._connect().__await__()

    def _is_yield_point(self, fn: Callable[..., Any]) -> bool:
        """A statement, a commit or a rollback: where aiosqlite's thread hop let the loop run other tasks.
        Yielding there keeps the same scheduling points (and so a fair loop under load) at a fraction of the cost."""
        return getattr(fn, "__name__", "") in _YIELD_AFTER

    async def _execute(self, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        deadline: float | None = None
        wait = _FIRST_WAIT
        while True:
            if not self._running or not self._connection:
                raise ValueError("Connection closed")
            try:
                result = fn(*args, **kwargs)
            except sqlite3.OperationalError as e:
                if not _retryable(e):
                    raise
                now = time.monotonic()
                deadline = now + self._busy_timeout if deadline is None else deadline
                if now >= deadline:
                    raise  # SQLite's own "database is locked", as after its busy timeout
                await asyncio.sleep(wait)  # the lock holder runs meanwhile
                wait = min(wait * 2, _MAX_WAIT)
                continue
            if self._is_yield_point(fn):
                await asyncio.sleep(0)
            return result


def inline_creator(path: str, *, busy_timeout: float) -> Callable[[], InlineConnection]:
    """An ``async_creator`` for :func:`sqlalchemy.ext.asyncio.create_async_engine` on SQLite file ``path``."""

    def connector() -> sqlite3.Connection:
        # timeout=0: a busy answer comes back at once and InlineConnection waits without blocking the loop;
        # check_same_thread=False as SQLAlchemy's pysqlite dialect sets for pooled file databases
        return sqlite3.connect(path, timeout=0, check_same_thread=False)

    def create() -> InlineConnection:
        return InlineConnection(connector, busy_timeout=busy_timeout)

    return create
