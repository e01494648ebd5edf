"""Alembic environment (alembic's async template), render_as_batch for SQLite.

One upgrade is one transaction, on every database: every migration of the run and the version row commit
together or not at all, so a kill at any point leaves the schema as it was and the next start redoes the
whole upgrade. On PostgreSQL DDL is transactional already. On SQLite it is too, but Python's ``sqlite3``
(and so aiosqlite) in its legacy transaction mode emits no BEGIN before DDL, so each CREATE committed on its
own and the version row came last: a kill in between left tables without a version and every later start
failed with "table ... already exists". Here the driver's own transaction handling is switched off and
SQLAlchemy's "begin" emits ``BEGIN IMMEDIATE`` (SQLAlchemy's documented recipe, see "Enabling Non-Legacy
SQLite Transactional Modes"), and alembic is told that DDL is transactional, so it wraps the whole run in
that one transaction instead of one per migration.

Several processes starting at once: the migration lock is taken before alembic reads the version table.
SQLite: ``BEGIN IMMEDIATE`` takes the write lock at once; a second process waits for it (busy timeout),
then reads the version the first one committed and has nothing to do. PostgreSQL: a transaction-level
advisory lock, released by the COMMIT (or by the server when the connection dies).
"""
from __future__ import annotations

import asyncio
import logging.config

from alembic import context
from sqlalchemy import event, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_engine_from_config

from agency.db.tables import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    logging.config.fileConfig(config.config_file_name)
target_metadata = Base.metadata

# pg_advisory_xact_lock key of A-TEAMs' migrations: any 64-bit number that nothing else in the database uses
PG_MIGRATION_LOCK = 0x4154_4541_4D53_6462  # "ATEAMSdb"
# how long a SQLite migration waits for another process's write lock (its migration, usually) before failing
SQLITE_LOCK_WAIT_SECONDS = 120.0


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or ""
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=_is_sqlite(url),
        transactional_ddl=True,  # the script is one BEGIN ... COMMIT on SQLite too
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        # every migration and the version row in one transaction (transaction_per_migration stays False);
        # on SQLite this needs the BEGIN of _sqlite_transactions (without it SQLite would autocommit each DDL)
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # before alembic reads the version: a second process waits here for the first one's COMMIT
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
        context.run_migrations()


def _sqlite_transactions(engine: AsyncEngine) -> None:
    """Real transactions on this SQLite engine: the driver emits no BEGIN of its own (and so none of its
    implicit COMMITs either); every SQLAlchemy transaction starts with BEGIN IMMEDIATE."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.isolation_level = None  # sqlite3 in autocommit mode: transactions are ours alone
        cursor = dbapi_connection.cursor()
        # outside any transaction, where these take effect:
        # - WAL, as every connection of the agency uses it: set here, before the schema exists, so no later
        #   connection has to switch the journal mode (which needs the database to itself)
        # - no foreign-key enforcement while migrating: a batch-mode table copy drops and renames a table,
        #   which with enforcement on would delete or check the rows referencing it. (Inside a transaction
        #   PRAGMA foreign_keys is a no-op, so it is set here, the way SQLite's ALTER TABLE procedure says.)
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Connection) -> None:
        # IMMEDIATE: the write lock now, before the version is read, so two processes migrating one file
        # serialise (the second waits up to the busy timeout) instead of both reading "no version"
        conn.exec_driver_sql("BEGIN IMMEDIATE")


async def run_async_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url") or ""
    options: dict = {}
    if _is_sqlite(url):
        options["connect_args"] = {"timeout": SQLITE_LOCK_WAIT_SECONDS}
    elif url.startswith("postgresql"):
        # each statement sees what other transactions committed before it: after the advisory lock, the
        # version another process wrote (a REPEATABLE READ default would keep the snapshot from before the lock)
        options["isolation_level"] = "READ COMMITTED"
    connectable = async_engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
        **options,
    )
    if connectable.dialect.name == "sqlite":
        _sqlite_transactions(connectable)
    try:
        async with connectable.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await connectable.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # a caller's own connection: its transaction handling is the caller's (see _sqlite_transactions)
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
