"""The automation database: the audience's engine factory, and Alembic migrations of its own
(own version table, so both plugins can share one database), run under the same locks."""

from __future__ import annotations

import asyncio
import os

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from gateway_plugins.audience.engine import _lock_file, create_engine
from gateway_plugins.automation.schema import VERSION_TABLE
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["create_engine", "migrate"]

SCRIPT_LOCATION = "gateway_plugins.automation:migrations"
_MIGRATION_LOCK = 0x6175_746F_6D61
"""PostgreSQL advisory lock key ("automa") held while migrating."""


def alembic_config(connection: sa.Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: sa.Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


async def migrate(engine: AsyncEngine, *, schema: str = "") -> None:
    """Bring the automation tables to the newest revision (a no-op when current)."""
    if engine.dialect.name == "sqlite":
        lock = await asyncio.to_thread(_lock_file, engine)
        try:
            async with engine.begin() as connection:
                await _upgrade_on(connection)
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
        await _upgrade_on(connection)


async def _upgrade_on(connection: AsyncConnection) -> None:
    def upgrade(sync_connection: sa.Connection) -> None:
        if current_revision(sync_connection) != head_revision():
            command.upgrade(alembic_config(sync_connection), "head")

    await connection.run_sync(upgrade)
