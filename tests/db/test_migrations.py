"""The schema exists only through migrations, and the migrations match the tables."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine

from agency.db.session import Database, alembic_config, upgrade_sync
from agency.db.tables import Base


def test_migrations_build_exactly_the_declared_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    upgrade_sync(url)
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == [], f"tables.py and migrations/ disagree; add a migration: {diff}"
    assert {"agencies", "projects", "approaches", "streams", "members", "system_messages", "tasks", "task_deps",
            "approvals", "messages", "llm_calls", "feedback", "events", "spaces"} <= tables


async def test_sqlite_upgrades_itself_and_uses_wal(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'sub' / 'a.db'}")
    await db.upgrade()
    async with db.engine.connect() as conn:
        mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
    await db.dispose()
    assert mode == "wal"


def test_db_upgrade_command(tmp_path: Path) -> None:
    env = {"ATEAMS_CONFIG": str(tmp_path / "none.toml"), "ATEAMS_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "agency", "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "ateams.db").is_file()
    assert "is at head" in r.stdout


_FAIL_POINTS = {  # where the injected failure strikes: after the first statement that matches
    "first table": lambda sql: sql.startswith("CREATE TABLE agencies"),
    "version row of the first migration": lambda sql: sql.startswith("INSERT INTO alembic_version"),
    "batch copy: table dropped": lambda sql: sql.startswith("DROP TABLE"),
    "last statement": None,
}


@pytest.mark.parametrize("point", list(_FAIL_POINTS))
def test_an_upgrade_is_one_transaction(tmp_path: Path, point: str) -> None:
    """A failure anywhere in the upgrade rolls back every migration of the run: the file has no table, and
    the next upgrade builds everything. (tests/reliability/test_migration_kill.py does this with SIGKILL.)"""
    db = tmp_path / "t.db"
    url = f"sqlite+aiosqlite:///{db}"
    executed: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        executed.append(" ".join(statement.split()))

    event.listen(Engine, "after_cursor_execute", count)
    try:
        upgrade_sync(f"sqlite+aiosqlite:///{tmp_path / 'count.db'}")
    finally:
        event.remove(Engine, "after_cursor_execute", count)
    match = _FAIL_POINTS[point]
    hits = [n for n, sql in enumerate(executed, 1) if match is None or match(sql)]
    if not hits:
        pytest.skip(f"no migration has a {point}")
    stop = hits[-1] if match is None else hits[0]
    seen = [0]

    def fail(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        seen[0] += 1
        if seen[0] == stop:
            raise RuntimeError(f"injected failure after statement {stop}: {statement[:60]}")

    event.listen(Engine, "after_cursor_execute", fail)
    try:
        with pytest.raises(Exception, match="injected failure"):
            upgrade_sync(url)
    finally:
        event.remove(Engine, "after_cursor_execute", fail)
    with closing(sqlite3.connect(db)) as c:
        assert list(c.execute("SELECT type, name FROM sqlite_master")) == []
    upgrade_sync(url)
    with closing(sqlite3.connect(db)) as c:
        assert [v for (v,) in c.execute("SELECT version_num FROM alembic_version")] == [
            ScriptDirectory.from_config(alembic_config(url)).get_current_head()]
