"""Bring SQLite files made by an earlier version up to the current schema, in place.

``CREATE TABLE IF NOT EXISTS`` leaves an existing table as it is, so every column added since
the first release is added here when it is missing (with the default older rows mean), and
indexes over such columns are created only after it. Each step checks the file itself
(``PRAGMA table_info``) rather than a version number, so running it again changes nothing.
"""

from __future__ import annotations

import sqlite3

SHARD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("events", "classification", "TEXT NOT NULL DEFAULT ''"),
    ("messages", "stream", "TEXT NOT NULL DEFAULT 'transactional'"),
    ("deliveries", "lane", "INTEGER NOT NULL DEFAULT 0"),
)
"""``(table, column, declaration)`` added to shard files that lack them."""

SHARD_INDEXES = """
CREATE INDEX IF NOT EXISTS deliveries_lane_due ON deliveries(lane, next_attempt_at)
    WHERE status IN ('queued', 'deferred');
"""
"""Indexes over migrated columns, created after the columns exist."""


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def add_missing_columns(conn: sqlite3.Connection, wanted: tuple[tuple[str, str, str], ...]) -> None:
    for table, column, declaration in wanted:
        if column not in columns(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def migrate_shard(conn: sqlite3.Connection) -> None:
    add_missing_columns(conn, SHARD_COLUMNS)
    if SHARD_INDEXES:
        conn.executescript(SHARD_INDEXES)


_SCOPED_SUPPRESSIONS = """
CREATE TABLE suppressions_scoped (
    tenant TEXT NOT NULL,
    address TEXT NOT NULL,
    scope TEXT NOT NULL DEFAULT 'tenant',
    reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (tenant, address, scope)
) WITHOUT ROWID;
INSERT INTO suppressions_scoped (tenant, address, scope, reason, created_at, detail)
    SELECT tenant, address, 'tenant', reason, created_at, detail FROM suppressions;
DROP TABLE suppressions;
ALTER TABLE suppressions_scoped RENAME TO suppressions;
"""


def migrate_tenants(conn: sqlite3.Connection) -> None:
    """Suppressions gained a ``scope`` in their key: entries made before it are tenant-wide.
    Several workers may open ``tenants.db`` at once, so the check is repeated under the write
    lock and only one of them rebuilds the table."""
    if "scope" in columns(conn, "suppressions"):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "scope" not in columns(conn, "suppressions"):
            for statement in _SCOPED_SUPPRESSIONS.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
