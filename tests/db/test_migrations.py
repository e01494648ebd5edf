"""The schema exists only through migrations, and the migrations match the tables."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from agency.db.session import Database, upgrade_sync
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
