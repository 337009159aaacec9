"""The two audience engines the contract tests run on: an SQLite file in the test's tmp_path,
and PostgreSQL at 127.0.0.1:5432 (database ``test``) in a schema of its own per test, dropped
afterwards, so parallel runs never see each other's tables. PostgreSQL missing fails the
tests: it is never skipped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from gateway_plugins.audience.engine import create_engine

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
ENGINES = ("sqlite", "postgresql")


class Database:
    """Where one test's audience lives: the ``[plugins.audience]`` url and schema."""

    def __init__(self, url: str, schema: str = "") -> None:
        self.url = url
        self.schema = schema

    def toml(self) -> str:
        lines = f'[plugins.audience]\nurl = "{self.url}"\n'
        return lines + (f'schema = "{self.schema}"\n' if self.schema else "")


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[Database]:
    """The schema is created by the first migration (``CREATE SCHEMA IF NOT EXISTS``)."""
    if kind == "sqlite":
        yield Database(f"sqlite+aiosqlite:///{tmp_path / 'audience.db'}")
        return
    schema = f"audience_test_{uuid.uuid4().hex[:12]}"
    try:
        yield Database(POSTGRES_URL, schema)
    finally:
        # A loop of its own: this runs in sync fixture code, beside pytest-asyncio's loop.
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(drop_schema(schema))
        finally:
            loop.close()


async def drop_schema(schema: str) -> None:
    engine = create_engine(POSTGRES_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()
