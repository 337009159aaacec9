"""SQL for the event-webhook queue and its delivery log, in the shared ``tenants.db``.

Webhook events are tenant-wide and any worker may send them, so they live beside the
suppression list in ``tenants.db`` (every worker writes it, rarely, under SQLite's locking).
A claim moves the event's due time to the claimer's lease deadline in the same statement, so
two workers never send one event at once, and one that dies mid-send leaves it due again later.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from gateway.store.base import WebhookAttempt, WebhookEvent, WebhookStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_events (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    type TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_events_due ON webhook_events(next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_events_tenant ON webhook_events(tenant, id);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    duration REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_attempts_event ON webhook_attempts(event_id);
"""

_COLUMNS = (
    "id, tenant, endpoint, type, payload, created_at, status, attempts, next_attempt_at, "
    "last_error, updated_at"
)


def _event(row: tuple[Any, ...]) -> WebhookEvent:
    return WebhookEvent(
        id=row[0],
        tenant=row[1],
        endpoint=row[2],
        type=row[3],
        payload=bytes(row[4]),
        created_at=row[5],
        status=row[6],
        attempts=row[7],
        next_attempt_at=row[8],
        last_error=row[9],
        updated_at=row[10],
    )


def insert(conn: sqlite3.Connection, events: list[WebhookEvent]) -> None:
    conn.executemany(
        f"INSERT INTO webhook_events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                e.id,
                e.tenant,
                e.endpoint,
                e.type,
                e.payload,
                e.created_at,
                e.status,
                e.attempts,
                e.next_attempt_at,
                e.last_error,
                e.updated_at or e.created_at,
            )
            for e in events
        ],
    )


def claim(
    conn: sqlite3.Connection, now: float, limit: int, lease_until: float
) -> list[WebhookEvent]:
    rows = conn.execute(
        "UPDATE webhook_events SET next_attempt_at = ? WHERE id IN ("
        " SELECT id FROM webhook_events WHERE status = 'pending' AND next_attempt_at <= ?"
        f" ORDER BY next_attempt_at LIMIT ?) RETURNING {_COLUMNS}",
        (lease_until, now, limit),
    ).fetchall()
    return sorted(map(_event, rows), key=lambda e: e.created_at)


def record_attempt(
    conn: sqlite3.Connection, event_id: str, attempt: WebhookAttempt, next_attempt_at: float
) -> None:
    conn.execute(
        "UPDATE webhook_events SET status = ?, attempts = attempts + 1, next_attempt_at = ?,"
        " last_error = ?, updated_at = ? WHERE id = ?",
        (
            attempt.outcome,
            next_attempt_at,
            "" if attempt.outcome == "delivered" else attempt.detail,
            attempt.at,
            event_id,
        ),
    )
    conn.execute(
        "INSERT INTO webhook_attempts (event_id, at, status_code, outcome, detail, duration)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            event_id,
            attempt.at,
            attempt.status_code,
            attempt.outcome,
            attempt.detail,
            attempt.duration,
        ),
    )


def list_events(
    conn: sqlite3.Connection,
    tenant: str | None,
    status: WebhookStatus | None,
    endpoint: str | None,
    before_id: str | None,
    limit: int,
) -> list[WebhookEvent]:
    clauses, args = [], []
    for column, value in (("tenant", tenant), ("status", status), ("endpoint", endpoint)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if before_id is not None:
        clauses.append("id < ?")
        args.append(before_id)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM webhook_events{where} ORDER BY id DESC LIMIT ?", [*args, limit]
    ).fetchall()
    return [_event(r) for r in rows]


def get(
    conn: sqlite3.Connection, event_id: str
) -> tuple[WebhookEvent, list[WebhookAttempt]] | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM webhook_events WHERE id = ?", (event_id,)
    ).fetchone()
    if row is None:
        return None
    attempts = [
        WebhookAttempt(at=r[0], status_code=r[1], outcome=r[2], detail=r[3], duration=r[4])
        for r in conn.execute(
            "SELECT at, status_code, outcome, detail, duration FROM webhook_attempts"
            " WHERE event_id = ? ORDER BY id",
            (event_id,),
        )
    ]
    return _event(row), attempts


def replay(conn: sqlite3.Connection, event_id: str, now: float) -> WebhookEvent | None:
    row = conn.execute(
        "UPDATE webhook_events SET status = 'pending', next_attempt_at = ?, updated_at = ?"
        f" WHERE id = ? RETURNING {_COLUMNS}",
        (now, now, event_id),
    ).fetchone()
    return None if row is None else _event(row)


def counts(conn: sqlite3.Connection) -> dict[WebhookStatus, int]:
    found: dict[WebhookStatus, int] = {"pending": 0, "delivered": 0, "failed": 0}
    for status, n in conn.execute("SELECT status, COUNT(*) FROM webhook_events GROUP BY status"):
        found[status] = n
    return found
