"""A Database that is disposed releases SQLite's write lock, even when a session was
abandoned mid-transaction (a task cancelled between its write and its commit)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from agency.db.session import Database


def _can_write(path: Path) -> bool:
    probe = sqlite3.connect(path, timeout=0.2)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


async def test_dispose_closes_a_connection_left_in_a_write_transaction(tmp_path: Path) -> None:
    path = tmp_path / "locks.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.upgrade()
    conn = await db.engine.connect()  # checked out and never returned: the pool cannot see it
    await conn.execute(text("INSERT INTO agencies (external_id, name, settings, created_at) VALUES ('x', 'x', '{}', CURRENT_TIMESTAMP)"))
    assert not _can_write(path), "the open transaction should hold the write lock"
    await db.dispose()
    assert _can_write(path)
    # and nothing half-written survives: the abandoned transaction was rolled back
    check = sqlite3.connect(path)
    assert check.execute("SELECT count(*) FROM agencies").fetchone() == (0,)
    check.close()
    await conn.invalidate()  # the abandoned handle itself: let the pool forget it quietly
