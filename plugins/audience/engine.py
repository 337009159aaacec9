"""The audience database: one SQLAlchemy async engine (aiosqlite or asyncpg) and its
Alembic migrations, run at start-up on that engine's own connection.

Several workers or nodes may start at once: on PostgreSQL the migration holds a transaction
advisory lock, on SQLite an exclusive lock file beside the database, so exactly one of them
migrates and the others find the schema current.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

SCRIPT_LOCATION = "gateway_plugins.audience:migrations"
VERSION_TABLE = "alembic_version"
_MIGRATION_LOCK = 0x6175_6469_656E
"""PostgreSQL advisory lock key ("audien") held while migrating."""


def create_engine(url: str, *, schema: str = "") -> AsyncEngine:
    """An async engine for ``url`` (``sqlite+aiosqlite:///…`` or ``postgresql+asyncpg://…``);
    on PostgreSQL, ``schema`` becomes the connection's ``search_path``."""
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        connect_args["timeout"] = 30.0
        engine = create_async_engine(url, connect_args=connect_args)
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if schema:
        connect_args["server_settings"] = {"search_path": schema}
    return create_async_engine(url, connect_args=connect_args, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Migrations:
    """One chain of Alembic migrations: where its scripts are and the table recording how far
    a database has come. The audience has one; a plugin building on the audience tables (the
    campaigns) keeps its own chain beside it, in its own version table."""

    def __init__(self, script_location: str, version_table: str) -> None:
        self.script_location = script_location
        self.version_table = version_table


AUDIENCE = Migrations(SCRIPT_LOCATION, VERSION_TABLE)


def alembic_config(
    connection: sa.Connection | None = None, migrations: Migrations = AUDIENCE
) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", migrations.script_location)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision(migrations: Migrations = AUDIENCE) -> str:
    head = ScriptDirectory.from_config(alembic_config(None, migrations)).get_current_head()
    assert head is not None
    return head


def current_revision(connection: sa.Connection, migrations: Migrations = AUDIENCE) -> str | None:
    context = MigrationContext.configure(
        connection, opts={"version_table": migrations.version_table}
    )
    return context.get_current_revision()


async def migrate(
    engine: AsyncEngine, *, schema: str = "", migrations: Migrations = AUDIENCE
) -> None:
    """Bring the schema to the newest revision of ``migrations`` (a no-op when current)."""
    if engine.dialect.name == "sqlite":
        lock = await asyncio.to_thread(_lock_file, engine)
        try:
            await _upgrade(engine, migrations)
        finally:
            if lock is not None:
                os.close(lock)
        return
    async with engine.begin() as connection:
        if schema:
            quoted = engine.dialect.identifier_preparer.quote_identifier(schema)
            await connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
        await connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
        )
        await _upgrade_on(connection, migrations)


async def _upgrade(engine: AsyncEngine, migrations: Migrations) -> None:
    async with engine.begin() as connection:
        await _upgrade_on(connection, migrations)


async def _upgrade_on(connection: AsyncConnection, migrations: Migrations) -> None:
    def upgrade(sync_connection: sa.Connection) -> None:
        if current_revision(sync_connection, migrations) != head_revision(migrations):
            command.upgrade(alembic_config(sync_connection, migrations), "head")

    await connection.run_sync(upgrade)


def _lock_file(engine: AsyncEngine) -> int | None:
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd
