"""A spool written by the version before streams opens in place: messages are transactional,
their deliveries in the transactional lane, old events unclassified, and every suppression
entry tenant-wide."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.store.base import TENANT_SCOPE, MessageEvent, stream_scope
from gateway.store.sqlite import SqliteStore
from tests.store.conftest import T0

OLD_SHARD = """
CREATE TABLE messages (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, source TEXT NOT NULL,
    mail_from TEXT NOT NULL, smtp_utf8 INTEGER NOT NULL, created_at REAL NOT NULL,
    raw BLOB NOT NULL);
CREATE TABLE deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL REFERENCES messages(id), recipient TEXT NOT NULL,
    domain TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL, expires_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '', provider TEXT NOT NULL DEFAULT '',
    provider_message_id TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL);
CREATE INDEX deliveries_due ON deliveries(next_attempt_at)
    WHERE status IN ('queued', 'deferred');
CREATE TABLE events (id INTEGER PRIMARY KEY, message_id TEXT NOT NULL, at REAL NOT NULL,
    type TEXT NOT NULL, recipient TEXT NOT NULL, provider TEXT NOT NULL, detail TEXT NOT NULL);
INSERT INTO messages VALUES ('m1', 'default', 'smtp', 'a@example.com', 0, {t0},
    X'46726f6d3a20613c6578616d706c652e636f6d3e0d0a0d0a6869');
INSERT INTO deliveries (message_id, recipient, domain, status, next_attempt_at, expires_at,
    updated_at) VALUES ('m1', 'ann@example.org', 'example.org', 'queued', {t0}, {t1}, {t0});
INSERT INTO events (message_id, at, type, recipient, provider, detail)
    VALUES ('m1', {t0}, 'opened', 'ann@example.org', '', 'human');
"""

OLD_TENANTS = """
CREATE TABLE suppressions (tenant TEXT NOT NULL, address TEXT NOT NULL, reason TEXT NOT NULL,
    created_at REAL NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (tenant, address)) WITHOUT ROWID;
INSERT INTO suppressions VALUES ('default', 'quit@example.org', 'unsubscribe', {t0}, 'old');
"""


def _write(path: Path, script: str) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(script.format(t0=T0, t1=T0 + 3600))
    conn.close()


async def test_an_old_spool_is_upgraded_when_opened(tmp_path: Path) -> None:
    _write(tmp_path / "shard-0.db", OLD_SHARD)
    _write(tmp_path / "tenants.db", OLD_TENANTS)
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        (claimed,) = await store.claim(T0, limit=10)
        assert claimed.message.stream == "transactional" and not claimed.delivery.broadcast
        await store.record_event(
            MessageEvent(
                message_id="m1", at=T0 + 1, type="clicked", recipient="ann@example.org",
                detail="https://example.com/", classification="machine",
            )
        )  # fmt: skip
        opened, clicked = [e for e in await store.timeline("m1") if e.type in ("opened", "clicked")]
        assert (opened.classification, clicked.classification) == ("", "machine")
        (old,) = await store.list_suppressions("default")
        assert (old.address, old.scope, old.detail) == ("quit@example.org", TENANT_SCOPE, "old")
        news = stream_scope("news")
        found = await store.find_suppression("default", "quit@example.org", [news])
        assert found is None  # tenant-wide only matches when asked for
        assert await store.find_suppression("default", "quit@example.org") == old
    finally:
        await store.close()
    # Opening again changes nothing.
    again = SqliteStore(tmp_path)
    await again.open()
    try:
        assert len(await again.list_suppressions("default")) == 1
    finally:
        await again.close()
