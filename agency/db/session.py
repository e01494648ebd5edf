"""Engine and session factory; migrations run at start for SQLite."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


class Database:
    """Owns the async engine and hands out sessions. Built in ``__main__``, never at import."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        ensure_sqlite_dir(url)
        kwargs: dict = {"echo": echo}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.session: async_sessionmaker[AsyncSession] = async_sessionmaker(self.engine, expire_on_commit=False)

    async def upgrade(self) -> None:
        """Bring the schema to the newest migration (the only way tables are created)."""
        await asyncio.to_thread(upgrade_sync, self.url)

    async def dispose(self) -> None:
        await self.engine.dispose()


def ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


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
    from alembic import command

    ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)
