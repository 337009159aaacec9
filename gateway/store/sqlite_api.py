"""The SQLite side of what the HTTP API needs: tables, a reader over every shard, and queries.

Writes (message metadata, idempotency keys, events) go to the writing process's own shard, in
the same transaction as the message they belong to. Reads must see every shard, including
those other worker processes write: a client may ask worker B about a message worker A
accepted. ``ShardReader`` therefore keeps its own connections to every shard file present, on
one thread, and reads in WAL mode, which never blocks the writers. Suppression lists are
tenant-wide, so they live in one shared file (``tenants.db``) that every worker writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from gateway.message import Delivery, DeliveryStatus
from gateway.store.base import (
    DeliveryStats,
    IdempotencyClaim,
    IdempotencyConflict,
    IdempotencyEntry,
    MessageEvent,
    MessageMeta,
    MessageQuery,
    MessageRecord,
    StoreError,
    Suppression,
    SuppressionReason,
    cursor_key,
    suppression_key,
)

T = TypeVar("T")

SHARD_SCHEMA = """
CREATE INDEX IF NOT EXISTS messages_tenant ON messages(tenant, id);
CREATE INDEX IF NOT EXISTS messages_created ON messages(created_at);
CREATE TABLE IF NOT EXISTS message_meta (
    message_id TEXT PRIMARY KEY,
    tags TEXT NOT NULL,
    metadata TEXT NOT NULL,
    tracking TEXT NOT NULL,
    send_at REAL
);
CREATE TABLE IF NOT EXISTS message_tags (
    tag TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (tag, message_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    part INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (tenant, key, part)
);
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency(expires_at);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    at REAL NOT NULL,
    type TEXT NOT NULL,
    recipient TEXT NOT NULL,
    provider TEXT NOT NULL,
    detail TEXT NOT NULL,
    classification TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_message ON events(message_id);
"""

TENANT_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppressions (
    tenant TEXT NOT NULL,
    address TEXT NOT NULL,
    scope TEXT NOT NULL DEFAULT 'tenant',
    reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (tenant, address, scope)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sightings (
    key TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flags (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

HEAD_BYTES = 16384
_OUTCOME_EVENT = {"sent": "delivered", "soft_fail": "deferred", "hard_fail": "bounced"}
DELIVERY_COLUMNS = (
    "id, message_id, recipient, status, attempts, next_attempt_at, expires_at, "
    "last_error, provider, provider_message_id, updated_at, lane"
)
"""The ``deliveries`` columns, in the order ``row_to_delivery`` reads them."""


def row_to_delivery(row: Sequence[Any], shard: int = 0) -> Delivery:
    return Delivery(
        id=row[0],
        message_id=row[1],
        recipient=row[2],
        status=DeliveryStatus(row[3]),
        attempts=row[4],
        next_attempt_at=row[5],
        expires_at=row[6],
        last_error=row[7],
        provider=row[8],
        provider_message_id=row[9],
        updated_at=row[10],
        shard=shard,
        broadcast=bool(row[11]),
    )


# --- writes, run inside the enqueue transaction -----------------------------------------------


def insert_meta(
    conn: sqlite3.Connection, message_id: str, meta: MessageMeta, send_at: float | None
) -> None:
    conn.execute(
        "INSERT INTO message_meta (message_id, tags, metadata, tracking, send_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (
            message_id,
            msgspec.json.encode(meta.tags).decode(),
            msgspec.json.encode(meta.metadata).decode(),
            msgspec.json.encode(meta.tracking).decode(),
            send_at,
        ),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO message_tags (tag, message_id) VALUES (?, ?)",
        [(tag, message_id) for tag in meta.tags],
    )


def insert_idempotency(
    conn: sqlite3.Connection, claim: IdempotencyClaim, message_id: str, now: float
) -> None:
    """Record the key; raises ``IdempotencyConflict`` (rolling back the message) if taken."""
    # An expired entry must not block reuse of its key.
    conn.execute(
        "DELETE FROM idempotency WHERE tenant = ? AND key = ? AND part = ? AND expires_at <= ?",
        (claim.tenant, claim.key, claim.part, now),
    )
    try:
        conn.execute(
            "INSERT INTO idempotency (tenant, key, part, message_id, fingerprint, response,"
            " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                claim.tenant,
                claim.key,
                claim.part,
                message_id,
                claim.fingerprint,
                claim.response,
                now,
                claim.expires_at,
            ),
        )
    except sqlite3.IntegrityError:
        raise IdempotencyConflict(f"idempotency key {claim.key!r} part {claim.part}") from None


MESSAGE_TABLES = ("message_meta", "message_tags", "events")
"""What the API keeps per message beside the spool's own rows, keyed by ``message_id``."""


def delete_orphans(conn: sqlite3.Connection) -> None:
    """Drop metadata and events of messages that no longer exist (after ``delete``)."""
    for table in MESSAGE_TABLES:
        conn.execute(
            f"DELETE FROM {table} WHERE NOT EXISTS"
            f" (SELECT 1 FROM messages m WHERE m.id = {table}.message_id)"
        )


def purge_messages(conn: sqlite3.Connection, before: float, batch: int) -> int:
    """Up to ``batch`` messages accepted before ``before`` with only final deliveries, gone."""
    final = [s.value for s in DeliveryStatus if s.is_terminal]
    marks = ",".join("?" * len(final))
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT m.id FROM messages m WHERE m.created_at < ? AND NOT EXISTS (SELECT 1 FROM"
            f" deliveries d WHERE d.message_id = m.id AND d.status NOT IN ({marks})) LIMIT ?",
            (before, *final, batch),
        )
    ]
    if not ids:
        return 0
    chosen = ",".join("?" * len(ids))
    conn.execute(
        "DELETE FROM attempts WHERE delivery_id IN"
        f" (SELECT id FROM deliveries WHERE message_id IN ({chosen}))",
        ids,
    )
    for table in ("deliveries", *MESSAGE_TABLES):
        conn.execute(f"DELETE FROM {table} WHERE message_id IN ({chosen})", ids)
    conn.execute(f"DELETE FROM messages WHERE id IN ({chosen})", ids)
    return len(ids)


def insert_event(conn: sqlite3.Connection, event: MessageEvent) -> None:
    conn.execute(
        "INSERT INTO events (message_id, at, type, recipient, provider, detail, classification)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            event.message_id,
            event.at,
            event.type,
            event.recipient,
            event.provider,
            event.detail,
            event.classification,
        ),
    )


def purge_idempotency(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,)).rowcount


# --- reading every shard ----------------------------------------------------------------------

Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]
"""A queued operation's future, and its result or error, computed on a store thread."""


def settle_threadsafe(outcomes: list[Outcome]) -> None:
    """From a store thread: resolve each future on its own event loop, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # loop closed: nobody is waiting any more
            pass


def _settle(outcomes: list[Outcome]) -> None:
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class ShardReader:
    """Read-only queries over every ``shard-*.db`` in a directory, on one dedicated thread.

    Reads queue up while the thread is busy and are answered together: one wake-up of the
    event loop per batch, not per query (the per-delivery suppression lookup is one of them).
    """

    def __init__(self, directory: Path, shard_files: Callable[[], list[Path]]) -> None:
        self.directory = directory
        self._shard_files = shard_files
        self._connections: dict[Path, sqlite3.Connection] = {}
        self._work: queue.SimpleQueue[
            tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spool-read", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._work.put(None)
        self._thread.join()
        self._thread = None

    async def read(self, operation: Callable[[sqlite3.Connection], T]) -> list[T]:
        """``operation``'s result on every shard that has the API tables."""
        if self._thread is None:
            raise StoreError("the spool reader is not open")
        future: asyncio.Future[list[T]] = asyncio.get_running_loop().create_future()
        self._work.put((operation, future))
        return await future

    def _run(self) -> None:
        while (first := self._work.get()) is not None:
            batch = [first]
            while len(batch) < 256:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._work.put(None)  # stop after answering this batch
                    break
                batch.append(item)
            outcomes: list[Outcome] = []
            for operation, future in batch:
                try:
                    outcomes.append((future, self._read_all(operation), None))
                except Exception as e:
                    outcomes.append((future, None, e))
            settle_threadsafe(outcomes)
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def _read_all(self, operation: Callable[[sqlite3.Connection], T]) -> list[T]:
        results = []
        for path in self._shard_files():
            try:
                conn = self._connection(path)
                conn.execute("BEGIN")
                try:
                    results.append(operation(conn))
                finally:
                    conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                if "no such table" in str(e):
                    continue  # a shard being created right now by another worker
                raise StoreError(f"reading {path.name}: {e}") from e
            except sqlite3.Error as e:
                raise StoreError(f"reading {path.name}: {e}") from e
        return results

    def _connection(self, path: Path) -> sqlite3.Connection:
        conn = self._connections.get(path)
        if conn is None:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA busy_timeout=10000")
            self._connections[path] = conn
        return conn


# --- queries (each runs on one shard; callers merge) ------------------------------------------


def find_idempotency(
    conn: sqlite3.Connection, tenant: str, key: str, now: float
) -> list[IdempotencyEntry]:
    rows = conn.execute(
        "SELECT part, message_id, fingerprint, response, created_at FROM idempotency"
        " WHERE tenant = ? AND key = ? AND expires_at > ?",
        (tenant, key, now),
    ).fetchall()
    return [
        IdempotencyEntry(
            part=r[0], message_id=r[1], fingerprint=r[2], response=r[3], created_at=r[4]
        )
        for r in rows
    ]


def merge_idempotency(found: Iterable[list[IdempotencyEntry]]) -> list[IdempotencyEntry]:
    """One entry per part (the earliest, should two workers have raced), by part."""
    by_part: dict[int, IdempotencyEntry] = {}
    for entries in found:
        for e in entries:
            if e.part not in by_part or e.created_at < by_part[e.part].created_at:
                by_part[e.part] = e
    return [by_part[p] for p in sorted(by_part)]


def _message_filters(query: MessageQuery) -> tuple[str, list[Any]]:
    clauses = ["m.tenant = ?"]
    args: list[Any] = [query.tenant]
    if query.before_id is not None:
        clauses.append("m.id < ?")
        args.append(query.before_id)
    if query.since is not None:
        clauses.append("m.created_at >= ?")
        args.append(query.since)
    if query.until is not None:
        clauses.append("m.created_at < ?")
        args.append(query.until)
    if query.tag is not None:
        clauses.append(
            "EXISTS (SELECT 1 FROM message_tags t WHERE t.tag = ? AND t.message_id = m.id)"
        )
        args.append(query.tag)
    if query.stream is not None:
        clauses.append("m.stream = ?")
        args.append(query.stream)
    if query.status is not None:
        clauses.append(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id AND d.status = ?)"
        )
        args.append(query.status.value)
    if query.recipient is not None:
        clauses.append(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id"
            " AND d.recipient = ? COLLATE NOCASE)"
        )
        args.append(query.recipient.strip())
    return " WHERE " + " AND ".join(clauses), args


_RECORD_SELECT = (
    "SELECT m.id, m.tenant, m.source, m.mail_from, m.created_at, length(m.raw),"
    f" substr(m.raw, 1, {HEAD_BYTES}), mm.tags, mm.metadata, mm.tracking, mm.send_at, m.stream"
    " FROM messages m LEFT JOIN message_meta mm ON mm.message_id = m.id"
)


def list_messages(conn: sqlite3.Connection, query: MessageQuery) -> list[MessageRecord]:
    where, args = _message_filters(query)
    rows = conn.execute(
        f"{_RECORD_SELECT}{where} ORDER BY m.id DESC LIMIT ?", [*args, query.limit]
    ).fetchall()
    return _with_deliveries(conn, [_row_to_record(r) for r in rows])


def message_record(conn: sqlite3.Connection, tenant: str, message_id: str) -> MessageRecord | None:
    row = conn.execute(
        f"{_RECORD_SELECT} WHERE m.id = ? AND m.tenant = ?", (message_id, tenant)
    ).fetchone()
    return None if row is None else _with_deliveries(conn, [_row_to_record(row)])[0]


def _row_to_record(row: tuple[Any, ...]) -> MessageRecord:
    head = bytes(row[6])
    end = head.find(b"\r\n\r\n")
    meta = (
        MessageMeta(
            tags=tuple(msgspec.json.decode(row[7])),
            metadata=msgspec.json.decode(row[8]),
            tracking=msgspec.json.decode(row[9]),
        )
        if row[7] is not None
        else MessageMeta()
    )
    return MessageRecord(
        id=row[0],
        tenant=row[1],
        source=row[2],
        mail_from=row[3],
        created_at=row[4],
        size=row[5],
        head=head[: end + 2] if end >= 0 else head,
        meta=meta,
        send_at=row[10],
        stream=row[11],
        deliveries=[],
    )


def _with_deliveries(conn: sqlite3.Connection, records: list[MessageRecord]) -> list[MessageRecord]:
    by_id = {r.id: r for r in records}
    ids = list(by_id)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for row in conn.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries"
            f" WHERE message_id IN ({','.join('?' * len(chunk))}) ORDER BY id",
            chunk,
        ):
            by_id[row[1]].deliveries.append(row_to_delivery(row))
    return records


def timeline(conn: sqlite3.Connection, message_id: str) -> list[MessageEvent]:
    """Events derived from the delivery records, plus the recorded ones."""
    head = conn.execute(
        "SELECT m.created_at, mm.send_at, (SELECT COUNT(*) FROM deliveries d"
        " WHERE d.message_id = m.id) FROM messages m"
        " LEFT JOIN message_meta mm ON mm.message_id = m.id WHERE m.id = ?",
        (message_id,),
    ).fetchone()
    if head is None:
        return []
    created_at, send_at, recipients = head
    events = [
        MessageEvent(
            message_id=message_id,
            at=created_at,
            type="queued",
            detail=f"{recipients} recipient(s)",
        )
    ]
    if send_at is not None:
        events.append(
            MessageEvent(
                message_id=message_id,
                at=created_at,
                type="scheduled",
                detail="due " + dt.datetime.fromtimestamp(send_at, dt.UTC).isoformat(),
            )
        )
    for at, provider, outcome, detail, recipient in conn.execute(
        "SELECT a.at, a.provider, a.outcome, a.detail, d.recipient FROM attempts a"
        " JOIN deliveries d ON d.id = a.delivery_id WHERE d.message_id = ? ORDER BY a.id",
        (message_id,),
    ):
        events.append(
            MessageEvent(
                message_id=message_id,
                at=at,
                type=_OUTCOME_EVENT.get(outcome, "attempted"),  # type: ignore[arg-type]
                recipient=recipient,
                provider=provider,
                detail=detail,
            )
        )
    for recipient, status, updated_at, last_error, provider in conn.execute(
        "SELECT recipient, status, updated_at, last_error, provider FROM deliveries"
        " WHERE message_id = ? AND status IN ('sending', 'expired', 'skipped')",
        (message_id,),
    ):
        kind = {"sending": "attempted", "expired": "expired", "skipped": "suppressed"}[status]
        events.append(
            MessageEvent(
                message_id=message_id,
                at=updated_at,
                type=kind,  # type: ignore[arg-type]
                recipient=recipient,
                provider=provider,
                detail=last_error,
            )
        )
    for at, kind, recipient, provider, detail, classification in conn.execute(
        "SELECT at, type, recipient, provider, detail, classification FROM events"
        " WHERE message_id = ? ORDER BY id",
        (message_id,),
    ):
        events.append(
            MessageEvent(
                message_id=message_id,
                at=at,
                type=kind,
                recipient=recipient,
                provider=provider,
                detail=detail,
                classification=classification,
            )
        )
    return events


def delivery_stats(
    conn: sqlite3.Connection, tenant: str, since: float, until: float, stream: str | None = None
) -> list[tuple[str, str, str, int]]:
    """Rows of (dimension, key, status, count): dimension is ``status``, ``day``, ``tag``,
    ``stream`` or ``engagement`` (key: event type, status: classification)."""
    period = "m.tenant = ? AND m.created_at >= ? AND m.created_at < ?"
    args: tuple[Any, ...] = (tenant, since, until)
    if stream is not None:
        period += " AND m.stream = ?"
        args += (stream,)
    rows: list[tuple[str, str, str, int]] = []
    for status, count in conn.execute(
        "SELECT d.status, COUNT(*) FROM deliveries d JOIN messages m ON m.id = d.message_id"
        f" WHERE {period} GROUP BY d.status",
        args,
    ):
        rows.append(("status", status, status, count))
    for day, status, count in conn.execute(
        "SELECT date(m.created_at, 'unixepoch'), d.status, COUNT(*) FROM deliveries d"
        f" JOIN messages m ON m.id = d.message_id WHERE {period} GROUP BY 1, 2",
        args,
    ):
        rows.append(("day", day, status, count))
    for tag, status, count in conn.execute(
        "SELECT t.tag, d.status, COUNT(*) FROM message_tags t"
        " JOIN messages m ON m.id = t.message_id JOIN deliveries d ON d.message_id = m.id"
        f" WHERE {period} GROUP BY 1, 2",
        args,
    ):
        rows.append(("tag", tag, status, count))
    for name, status, count in conn.execute(
        "SELECT m.stream, d.status, COUNT(*) FROM deliveries d"
        f" JOIN messages m ON m.id = d.message_id WHERE {period} GROUP BY 1, 2",
        args,
    ):
        rows.append(("stream", name, status, count))
    for kind, label, count in conn.execute(
        "SELECT e.type, e.classification, COUNT(*) FROM events e"
        f" JOIN messages m ON m.id = e.message_id WHERE {period}"
        " AND e.type IN ('opened', 'clicked') GROUP BY 1, 2",
        args,
    ):
        rows.append(("engagement", kind, label or "unclassified", count))
    return rows


def merge_stats(found: Iterable[list[tuple[str, str, str, int]]]) -> DeliveryStats:
    stats = DeliveryStats(by_status={}, by_tag={}, by_day={})
    for rows in found:
        for dimension, key, status, count in rows:
            if dimension == "status":
                stats.by_status[status] = stats.by_status.get(status, 0) + count
                continue
            table = {
                "day": stats.by_day,
                "tag": stats.by_tag,
                "stream": stats.by_stream,
                "engagement": stats.engagement,
            }[dimension]
            bucket = table.setdefault(key, {})
            bucket[status] = bucket.get(status, 0) + count
    return stats


# --- suppressions (tenants.db) ----------------------------------------------------------------


_SUPPRESSION_COLUMNS = "tenant, address, reason, created_at, detail, scope"
_ENTRY_KEY = "address || CASE scope WHEN 'tenant' THEN '' ELSE ' ' || scope END"
"""SQL for :func:`gateway.store.base.entry_key`: the listing order and cursor."""


def add_suppressions(conn: sqlite3.Connection, entries: Sequence[Suppression]) -> int:
    conn.executemany(
        f"INSERT OR REPLACE INTO suppressions ({_SUPPRESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (e.tenant, suppression_key(e.address), e.reason, e.created_at, e.detail, e.scope)
            for e in entries
        ],
    )
    return len(entries)


def remove_suppression(
    conn: sqlite3.Connection, tenant: str, address: str, scope: str | None
) -> bool:
    sql, args = "DELETE FROM suppressions WHERE tenant = ? AND address = ?", [tenant]
    args.append(suppression_key(address))
    if scope is not None:
        sql += " AND scope = ?"
        args.append(scope)
    return conn.execute(sql, args).rowcount > 0


def list_suppressions(
    conn: sqlite3.Connection,
    tenant: str,
    reason: SuppressionReason | None,
    scope: str | None,
    after: str | None,
    limit: int,
) -> list[Suppression]:
    clauses, args = ["tenant = ?"], [tenant]
    if reason is not None:
        clauses.append("reason = ?")
        args.append(reason)
    if scope is not None:
        clauses.append("scope = ?")
        args.append(scope)
    if after is not None:
        clauses.append(f"{_ENTRY_KEY} > ?")
        args.append(cursor_key(after))
    rows = conn.execute(
        f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions"
        f" WHERE {' AND '.join(clauses)} ORDER BY {_ENTRY_KEY} LIMIT ?",
        [*args, limit],
    ).fetchall()
    return [_row_to_suppression(r) for r in rows]


def _first_in_order(rows: Iterable[tuple[Any, ...]], scopes: Sequence[str]) -> dict[str, Any]:
    """Address → the row whose scope comes first in ``scopes``."""
    rank = {scope: i for i, scope in enumerate(scopes)}
    best: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        held = best.get(row[1])
        if held is None or rank[row[5]] < rank[held[5]]:
            best[row[1]] = row
    return best


def suppressed(
    conn: sqlite3.Connection, tenant: str, addresses: Sequence[str], scopes: Sequence[str]
) -> dict[str, Suppression]:
    wanted = sorted({suppression_key(a) for a in addresses})
    marks = ",".join("?" * len(scopes))
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows += conn.execute(
            f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions WHERE tenant = ?"
            f" AND address IN ({','.join('?' * len(chunk))}) AND scope IN ({marks})",
            [tenant, *chunk, *scopes],
        ).fetchall()
    return {a: _row_to_suppression(r) for a, r in _first_in_order(rows, scopes).items()}


def find_suppression(
    conn: sqlite3.Connection, tenant: str, address: str, scopes: Sequence[str]
) -> Suppression | None:
    """Primary-key lookups, one per scope: the per-delivery check."""
    rows = conn.execute(
        f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions WHERE tenant = ? AND address = ?"
        f" AND scope IN ({','.join('?' * len(scopes))})",
        [tenant, suppression_key(address), *scopes],
    ).fetchall()
    best = _first_in_order(rows, scopes)
    return _row_to_suppression(next(iter(best.values()))) if best else None


def _row_to_suppression(row: tuple[Any, ...]) -> Suppression:
    return Suppression(
        tenant=row[0],
        address=row[1],
        reason=row[2],
        created_at=row[3],
        detail=row[4],
        scope=row[5],
    )


# --- counters and sightings (tenants.db: shared by every worker) -------------------------------


def counter(conn: sqlite3.Connection, key: str, now: float) -> int:
    row = conn.execute(
        "SELECT value FROM counters WHERE key = ? AND expires_at > ?", (key, now)
    ).fetchone()
    return 0 if row is None else int(row[0])


def counters(conn: sqlite3.Connection, keys: Sequence[str], now: float) -> dict[str, int]:
    found = dict.fromkeys(keys, 0)
    for start in range(0, len(keys), 500):
        chunk = list(keys[start : start + 500])
        for key, value in conn.execute(
            f"SELECT key, value FROM counters WHERE key IN ({','.join('?' * len(chunk))})"
            " AND expires_at > ?",
            (*chunk, now),
        ):
            found[key] = int(value)
    return found


def set_flag(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO flags (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def clear_flag(conn: sqlite3.Connection, key: str) -> bool:
    return conn.execute("DELETE FROM flags WHERE key = ?", (key,)).rowcount == 1


def flags(conn: sqlite3.Connection, prefix: str) -> dict[str, str]:
    # A range scan on the primary key; LIKE would need escaping of '%' and '_' in the prefix.
    return dict(
        conn.execute(
            "SELECT key, value FROM flags WHERE key >= ? AND key < ?",
            (prefix, prefix + "\U0010ffff"),
        ).fetchall()
    )


def add_to_counter(
    conn: sqlite3.Connection,
    key: str,
    amount: int,
    limit: int | None,
    expires_at: float,
    now: float,
) -> int | None:
    """New value, or ``None`` when ``limit`` would be exceeded (nothing is then changed).

    Runs inside the tenants writer's transaction, which serializes it against every other
    process writing ``tenants.db``.
    """
    value = counter(conn, key, now) + amount
    if limit is not None and value > limit:
        return None
    conn.execute(
        "INSERT INTO counters (key, value, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
        " expires_at = max(counters.expires_at, excluded.expires_at)",
        (key, value, expires_at),
    )
    return value


def first_sighting(conn: sqlite3.Connection, key: str, expires_at: float, now: float) -> bool:
    conn.execute("DELETE FROM sightings WHERE key = ? AND expires_at <= ?", (key, now))
    cursor = conn.execute(
        "INSERT OR IGNORE INTO sightings (key, expires_at) VALUES (?, ?)", (key, expires_at)
    )
    return cursor.rowcount == 1


def purge_counters(conn: sqlite3.Connection, now: float) -> int:
    removed = conn.execute("DELETE FROM counters WHERE expires_at <= ?", (now,)).rowcount
    return removed + conn.execute("DELETE FROM sightings WHERE expires_at <= ?", (now,)).rowcount
