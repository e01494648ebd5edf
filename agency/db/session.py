"""Engine and session factory; migrations run at start for SQLite."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from agency.db.inline_sqlite import inline_creator

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


class Database:
    """Owns the async engine and hands out sessions. Built in ``__main__``, never at import."""

    def __init__(self, url: str, *, echo: bool = False, busy_timeout: float = 10.0) -> None:
        """``busy_timeout``: how long a SQLite write waits for the lock; past it the write fails with
        "database is locked" and the engine redoes the step (which also breaks a wait cycle of two writers)."""
        self.url = url
        ensure_sqlite_dir(url)
        kwargs: dict = {"echo": echo}
        inline = _inline_path(url)
        if inline is not None:
            # SQLite on the loop's thread, with a busy wait that yields (agency.db.inline_sqlite)
            kwargs["async_creator"] = inline_creator(inline, busy_timeout=busy_timeout)
            if inline != ":memory:":  # (an in-memory database is one connection, SQLAlchemy's StaticPool)
                # a connection is cheap here (no thread): keep enough open that bursts of parallel steps do not
                # open and close overflow connections (each open re-reads the schema)
                kwargs.update(pool_size=20, max_overflow=40)
        elif url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": busy_timeout}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        # every driver connection this engine opens, so that dispose() can close the ones the pool
        # no longer knows about (a session abandoned by a cancelled task still holds SQLite's write lock)
        # (DBAPI connections, untyped: the async drivers' adapters carry the driver's own as .driver_connection)
        self._opened: dict[int, Any] = {}
        event.listen(self.engine.sync_engine, "connect", lambda conn, _rec: self._opened.__setitem__(id(conn), conn))
        event.listen(self.engine.sync_engine.pool, "close", lambda conn, _rec: self._opened.pop(id(conn), None))
        event.listen(self.engine.sync_engine.pool, "close_detached", lambda conn: self._opened.pop(id(conn), None))
        if url.startswith("sqlite"):
            # an inline connection must never busy-wait inside sqlite3 (it would stop the loop): timeout 0;
            # nor checkpoint the WAL (its fsync would stop the loop too): start_checkpoints() does that in a thread
            pragma_timeout = 0.0 if inline is not None else busy_timeout
            event.listen(self.engine.sync_engine, "connect",
                         lambda conn, _rec: _sqlite_pragmas(conn, pragma_timeout, autocheckpoint=inline is None))
        self._file = inline if inline not in (None, ":memory:") else None  # an inline SQLite file: checkpoints are ours
        self._busy_timeout = busy_timeout
        self._checkpoints: asyncio.Task[None] | None = None
        self.session: async_sessionmaker[AsyncSession] = async_sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings) -> "Database":  # noqa: ANN001 - agency.settings.Settings
        return cls(settings.db_url, busy_timeout=settings.db_busy_timeout_seconds)

    async def upgrade(self) -> None:
        """Bring the schema to the newest migration (the only way tables are created): one transaction, safe
        to kill and to run from several processes at once (see ``upgrade_sync``)."""
        await asyncio.to_thread(upgrade_sync, self.url)

    def start_checkpoints(self, interval: float = 2.0) -> None:
        """Checkpoint the WAL every ``interval`` seconds in a worker thread (long-running processes call this)."""
        if self._file is not None and (self._checkpoints is None or self._checkpoints.done()):
            self._checkpoints = asyncio.create_task(self._checkpoint_loop(interval), name="wal-checkpoints")

    async def _checkpoint_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.checkpoint()
            except Exception as e:  # noqa: BLE001 - the next round tries again; the WAL only grows meanwhile
                log.warning("WAL checkpoint failed: %s", e)

    async def checkpoint(self) -> tuple[int, int, int]:
        """A WAL checkpoint off the loop (writers wait for it asynchronously): (busy, frames in the WAL, frames
        checkpointed), as SQLite reports them."""
        if self._file is None:
            return (0, 0, 0)
        return await asyncio.to_thread(_truncate_checkpoint, self._file, self._busy_timeout)

    async def dispose(self) -> None:
        """Close every connection, including any still checked out, so no lock outlives the Database."""
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            await asyncio.gather(self._checkpoints, return_exceptions=True)
            self._checkpoints = None
        await self.engine.dispose()
        stray = [c for c in self._opened.values() if getattr(c, "driver_connection", None) is not None]
        self._opened.clear()
        for c in stray:
            close = getattr(c.driver_connection, "close", None)
            if close is None:
                continue
            try:
                async with asyncio.timeout(5):
                    result = close()
                    if asyncio.iscoroutine(result):
                        await result
            except Exception as e:  # noqa: BLE001 - closing is best effort; the lock goes with the connection
                log.warning("could not close a database connection at shutdown: %s", e)


def _inline_path(url: str) -> str | None:
    """The database path when ``url`` is a plain ``sqlite+aiosqlite`` URL (no query options), else None."""
    parsed = make_url(url)
    if parsed.drivername != "sqlite+aiosqlite" or parsed.query:
        return None
    return parsed.database or ":memory:"


def ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_conn, busy_timeout: float, *, autocheckpoint: bool = True) -> None:  # noqa: ANN001
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    if not autocheckpoint:
        cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


def _truncate_checkpoint(path: str, busy_timeout: float) -> tuple[int, int, int]:
    con = sqlite3.connect(path, timeout=busy_timeout)
    try:
        # TRUNCATE: checkpoint everything, wait (here, in this thread) for readers to leave the WAL, then
        # empty it. A passive checkpoint alone never lets a busy loop restart the WAL, which then only grows.
        busy, log_frames, done = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(busy), int(log_frames), int(done)
    finally:
        con.close()


def alembic_config(url: str):  # noqa: ANN201
    from alembic.config import Config

    mig_dir = ROOT / "migrations"  # the repository's folder (installs are editable; see Dockerfile)
    if not (mig_dir / "env.py").is_file():
        raise RuntimeError(f"migrations not found at {mig_dir}; install A-TEAMs from its repository with `pip install -e .`")
    cfg = Config()
    cfg.set_main_option("script_location", str(mig_dir))
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade_sync(url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` in ONE transaction (``migrations/env.py``): every migration of
    the run and the version row commit together or not at all, so a kill at any point leaves a database the
    next start upgrades from where it was. A second process upgrading the same database meanwhile waits for
    that transaction (SQLite's write lock, taken by BEGIN IMMEDIATE; a PostgreSQL advisory lock), then finds
    the new version and has nothing left to do."""
    from alembic import command

    ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)
