"""SQLite runs on the loop's thread (agency.db.inline_sqlite): no worker thread per
connection, and a write that finds the database locked waits without stopping the
loop, so the holder can finish; past the busy timeout it fails as SQLite does."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from agency.db.inline_sqlite import InlineConnection, _retryable
from agency.db.session import Database

INSERT = "INSERT INTO agencies (external_id, name, settings, created_at) VALUES (:x, :x, '{}', CURRENT_TIMESTAMP)"


class Turns:
    """Counts the turns another task gets on the loop (each ``interval`` seconds at most) while the block runs."""

    def __init__(self, interval: float = 0.0) -> None:
        self.interval = interval
        self.n = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.n += 1

    async def __aenter__(self) -> "Turns":
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _db(tmp_path: Path, busy_timeout: float = 5.0) -> Database:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}", busy_timeout=busy_timeout)
    await db.upgrade()
    return db


async def test_no_worker_thread_per_connection(tmp_path: Path) -> None:
    db = await _db(tmp_path)
    before = threading.active_count()
    sessions = [db.session() for _ in range(3)]
    for s in sessions:
        await s.__aenter__()
        await s.execute(text("SELECT count(*) FROM agencies"))
    conns = [await s.connection() for s in sessions]
    raw = [(await c.get_raw_connection()).driver_connection for c in conns]
    assert all(isinstance(r, InlineConnection) for r in raw)
    assert len({id(r) for r in raw}) == 3  # three pooled connections ...
    assert threading.active_count() == before  # ... and not one thread more
    for s in sessions:
        await s.__aexit__(None, None, None)
    await db.dispose()


async def test_a_writer_waits_for_a_holder_suspended_mid_transaction(tmp_path: Path) -> None:
    """The holder awaits something while it holds the write lock; the second writer's wait must let it run."""
    db = await _db(tmp_path)
    order: list[str] = []
    holder_has_lock = asyncio.Event()

    async def holder() -> None:
        async with db.session() as s, s.begin():
            await s.execute(text(INSERT), {"x": "first"})
            holder_has_lock.set()
            await asyncio.sleep(0.2)  # suspended with the lock held: only a loop that keeps running wakes it
            order.append("holder commits")

    async def waiter() -> None:
        await holder_has_lock.wait()
        async with db.session() as s, s.begin():
            await s.execute(text(INSERT), {"x": "second"})
            order.append("waiter wrote")

    async with Turns(0.01) as ticks:
        await asyncio.wait_for(asyncio.gather(holder(), waiter()), 5)
    assert order == ["holder commits", "waiter wrote"]
    assert ticks.n >= 5  # the loop ran while the waiter waited
    async with db.session() as s:
        names = (await s.execute(text("SELECT name FROM agencies ORDER BY id"))).scalars().all()
    assert names == ["first", "second"]
    await db.dispose()


async def test_a_lock_held_past_the_busy_timeout_fails_as_locked(tmp_path: Path) -> None:
    db = await _db(tmp_path, busy_timeout=0.3)
    other = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer that never lets go
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            async with db.session() as s, s.begin():
                await s.execute(text(INSERT), {"x": "late"})
    finally:
        other.rollback()
        other.close()
    async with db.session() as s, s.begin():  # once released, writes go through again
        await s.execute(text(INSERT), {"x": "after"})
    await db.dispose()


def _error(code: int) -> sqlite3.OperationalError:
    e = sqlite3.OperationalError("database is locked")
    e.sqlite_errorcode = code  # type: ignore[attr-defined]
    return e


def test_which_errors_are_waited_for() -> None:
    assert _retryable(_error(sqlite3.SQLITE_BUSY))
    assert _retryable(_error(sqlite3.SQLITE_LOCKED))
    assert _retryable(_error(sqlite3.SQLITE_BUSY | (1 << 8)))  # SQLITE_BUSY_RECOVERY
    assert not _retryable(_error(517))  # SQLITE_BUSY_SNAPSHOT: waiting cannot cure a stale read snapshot
    assert not _retryable(_error(sqlite3.SQLITE_READONLY))


async def test_the_loop_gets_a_turn_between_statements(tmp_path: Path) -> None:
    """A long run of statements in one session does not starve other tasks (as aiosqlite's hops did not)."""
    db = await _db(tmp_path)
    async with Turns() as turns:
        async with db.session() as s, s.begin():
            for i in range(100):
                await s.execute(text(INSERT), {"x": f"n{i}"})
    assert turns.n >= 100  # at least one turn per statement
    await db.dispose()


async def test_wal_checkpoints_run_in_a_thread_not_on_the_loop(tmp_path: Path) -> None:
    """Connections never checkpoint themselves (a checkpoint's fsync would stop the loop); the Database
    checkpoints from a worker thread and empties the WAL, and a long-running service does so every 2 s."""
    db = await _db(tmp_path)
    async with db.session() as s:
        assert (await s.execute(text("PRAGMA wal_autocheckpoint"))).scalar() == 0
    async with db.session() as s, s.begin():
        for i in range(50):
            await s.execute(text(INSERT), {"x": f"c{i}"})
    wal = tmp_path / "inline.db-wal"
    assert wal.stat().st_size > 0  # nothing checkpointed the writes yet
    busy, _, _ = await db.checkpoint()
    assert busy == 0 and wal.stat().st_size == 0  # all of it is in the database file, and the WAL emptied
    async with db.session() as s:
        assert (await s.execute(text("SELECT count(*) FROM agencies"))).scalar() == 50

    rounds: list[int] = []
    real = db.checkpoint

    async def counted() -> tuple[int, int, int]:
        rounds.append(1)
        return await real()

    db.checkpoint = counted  # type: ignore[method-assign]
    db.start_checkpoints(interval=0.01)
    async with asyncio.timeout(5):
        while len(rounds) < 2:
            await asyncio.sleep(0.01)
    await db.dispose()  # stops the checkpoints too
    n = len(rounds)
    await asyncio.sleep(0.05)
    assert len(rounds) == n


async def test_an_in_memory_database_works_too() -> None:
    db = Database("sqlite+aiosqlite:///:memory:")
    async with db.session() as s, s.begin():
        await s.execute(text("CREATE TABLE t (x INTEGER)"))
        await s.execute(text("INSERT INTO t VALUES (1), (2)"))
    async with db.session() as s:  # the same (only) connection: the table is still there
        assert (await s.execute(text("SELECT count(*) FROM t"))).scalar() == 2
    assert await db.checkpoint() == (0, 0, 0)  # nothing to checkpoint in memory
    await db.dispose()
