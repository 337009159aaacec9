"""The embedded store: SQLite in WAL mode with group commit, one file per worker process.

SQLite allows one writer per file, so each worker process owns a *shard* file
(``shard-<n>.db``) and writes only to it; several workers therefore never contend for a lock.
Within a process, every operation is handed to the shard's writer thread, which runs all
operations waiting at that moment in one transaction and commits once (``synchronous=FULL``
fsyncs the WAL at each commit). Under load, one fsync covers many messages; idle, a lone
message still commits at once. Callers' futures resolve only after the commit returns. Each
operation runs in its own savepoint, so one that fails (say, a duplicate message id) fails
only its caller, with a ``StoreError``; the rest of the batch commits.

Delivery ids are ``AUTOINCREMENT``: an id is never handed out twice, so the late outcome of a
send whose delivery an operator deleted cannot land on a newer delivery.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway import durable
from gateway.message import Attempt, Delivery, DeliveryStatus, Message
from gateway.store import sqlite_api, sqlite_migrations, sqlite_webhooks
from gateway.store.base import (
    TENANT_SCOPE,
    Claimed,
    DeliveryFilter,
    DeliveryStats,
    DeliveryUpdate,
    IdempotencyClaim,
    IdempotencyEntry,
    MessageEvent,
    MessageMeta,
    MessageQuery,
    MessageRecord,
    Store,
    StoreError,
    Suppression,
    SuppressionReason,
    WebhookAttempt,
    WebhookEvent,
    WebhookStatus,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    source TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    smtp_utf8 INTEGER NOT NULL,
    created_at REAL NOT NULL,
    raw BLOB NOT NULL,
    stream TEXT NOT NULL DEFAULT 'transactional'
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL REFERENCES messages(id),
    recipient TEXT NOT NULL,
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL DEFAULT '',
    provider_message_id TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    lane INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(next_attempt_at)
    WHERE status IN ('queued', 'deferred');
CREATE INDEX IF NOT EXISTS deliveries_message ON deliveries(message_id);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries(status);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL,
    at REAL NOT NULL,
    provider TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts(delivery_id);
"""

_DELIVERY_COLUMNS = sqlite_api.DELIVERY_COLUMNS
_row_to_delivery = sqlite_api.row_to_delivery
SHARD_SCHEMA = SCHEMA + sqlite_api.SHARD_SCHEMA
TENANTS_SCHEMA = sqlite_api.TENANT_SCHEMA + sqlite_webhooks.SCHEMA
"""``tenants.db``: what every worker shares (suppressions, webhooks)."""

_WAITING = (DeliveryStatus.QUEUED.value, DeliveryStatus.DEFERRED.value)


def shard_path(directory: Path, shard: int) -> Path:
    return directory / f"shard-{shard}.db"


def existing_shards(directory: Path) -> list[int]:
    """Shard numbers of the files present in ``directory``."""
    shards = []
    for path in directory.glob("shard-*.db"):
        number = path.stem.removeprefix("shard-")
        if number.isdigit():
            shards.append(int(number))
    return sorted(shards)


BUSY_TIMEOUT_MS = 10_000


def connect_file(
    path: Path, schema: str, migrate: Callable[[sqlite3.Connection], None]
) -> sqlite3.Connection:
    """Open (creating if need be) one spool file in WAL mode with ``schema``, brought up to
    date by ``migrate`` (``gateway.store.sqlite_migrations``).

    Another process creating the same file at the same moment (workers starting together)
    holds its lock briefly; switching to WAL must wait for it, not fail with ``database is
    locked`` — SQLite does not call the busy handler for that switch, so it is retried here,
    for at most the busy timeout. A new file's directory entry is fsync'd.
    """
    durable.make_directories(path.parent)
    is_new = not path.exists()
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _switch_to_wal(conn)
        # FULL: the WAL is fsync'd at every commit, which is what makes "250 OK" a promise.
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema)
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    if is_new:
        durable.fsync_directory(path.parent)
    return conn


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    wait = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() + wait > deadline:
                raise
        time.sleep(wait)  # this thread's own open, never the event loop's
        wait = min(wait * 2, 0.1)


def prepare_spool(directory: Path, shards: Sequence[int]) -> None:
    """Create the spool's shared file and the given shards once, before workers start (the
    supervisor calls it before forking), so workers never race to create them."""
    tenants = directory / "tenants.db"
    connect_file(tenants, TENANTS_SCHEMA, sqlite_migrations.migrate_tenants).close()
    for n in shards:
        shard = shard_path(directory, n)
        connect_file(shard, SHARD_SCHEMA, sqlite_migrations.migrate_shard).close()


Sync = Literal["now", "shared", "none"]
"""How an operation's commit reaches the disk. ``now``: committed and fsync'd at once (an
accepted message). ``shared``: fsync'd before its caller hears back, but its batch may wait
up to ``_Writer.share_wait`` seconds for a ``now`` operation to share that fsync (a delivery
outcome: no client waits for it). ``none``: no fsync of its own; the next fsync'd commit
covers it, and a crash may undo it (claims: a lost claim leaves the delivery queued, which
is what start-up recovery makes of a claim anyway). Alone, it commits at once; beside a
``shared`` operation, it waits with it."""

_Work = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", Sync]
"""An operation, the future for its result, and how its commit is made durable."""


class _Writer:
    """One SQLite connection on its own thread, committing whatever work is waiting, together."""

    def __init__(
        self,
        path: Path,
        max_batch: int = 512,
        schema: str = "",
        migrate: Callable[[sqlite3.Connection], None] = sqlite_migrations.migrate_shard,
    ) -> None:
        self.path = path
        self._schema = schema or SHARD_SCHEMA
        self._migrate = migrate
        self._max_batch = max_batch
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"spool:{path.name}", daemon=True)
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self._stopped = False
        self.share_wait = 0.003
        """How long a batch of ``shared`` operations waits for company (seconds); the
        single-session path (enqueue, deliver, record, next enqueue) then costs one fsync
        per message instead of two."""
        self._synchronous_full = True
        self.commits = 0
        self.operations = 0
        self.unsynced_commits = 0

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            raise StoreError(f"cannot open {self.path}: {self._open_error}") from self._open_error

    def stop(self) -> None:
        self._stopped = True
        if self._thread.is_alive():
            self._work.put(None)
            self._thread.join()

    async def submit(self, operation: Callable[[sqlite3.Connection], T], sync: Sync = "now") -> T:
        """Run ``operation`` in a coming transaction; its result once that is committed, and
        fsync'd unless ``sync`` is ``none`` (see ``Sync``)."""
        if self._stopped or not self._thread.is_alive():
            # Nobody would ever run it: fail now rather than leave the caller waiting forever.
            raise StoreError(f"spool {self.path.name} is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._work.put((operation, future, sync))
        return await future

    def _connect(self) -> sqlite3.Connection:
        return connect_file(self.path, self._schema, self._migrate)

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as e:  # reported to start(), which raises it in the caller
            self._open_error = e
            self._ready.set()
            return
        self._ready.set()
        stopping = False
        while not stopping:
            first = self._work.get()
            if first is None:
                break
            batch = [first]
            stopping = self._gather(batch)
            self._run_batch(conn, batch)
        conn.close()

    def _gather(self, batch: list[_Work]) -> bool:
        """Add the waiting work to ``batch``; while it holds a ``shared`` operation and no
        ``now`` one, wait up to ``share_wait`` for one. True when told to stop."""
        deadline: float | None = None
        while len(batch) < self._max_batch:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                kinds = {work[2] for work in batch}
                if "now" in kinds or "shared" not in kinds:
                    return False
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.share_wait
                if now >= deadline:
                    return False
                try:
                    item = self._work.get(timeout=deadline - now)
                except queue.Empty:
                    return False
            if item is None:
                return True
            batch.append(item)
        return False

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Work]) -> None:
        outcomes: list[sqlite_api.Outcome] = []
        durable = any(item[2] != "none" for item in batch)
        try:
            if durable != self._synchronous_full:
                # WAL mode: FULL fsyncs the WAL at commit, NORMAL leaves it to the next
                # durable commit (or checkpoint). Takes effect from the next COMMIT on.
                conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._synchronous_full = durable
            conn.execute("BEGIN IMMEDIATE")
            for operation, future, _ in batch:
                # A savepoint per operation: one failing operation must not undo its neighbours.
                conn.execute("SAVEPOINT op")
                try:
                    result = operation(conn)
                except Exception as e:
                    conn.execute("ROLLBACK TO op")
                    if isinstance(e, sqlite3.Error):
                        failure: Exception = StoreError(f"spool {self.path.name}: {e}")
                        failure.__cause__ = e
                    else:
                        failure = e
                    outcomes.append((future, None, failure))
                else:
                    outcomes.append((future, result, None))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
            self.commits += 1
            self.unsynced_commits += not durable
            self.operations += len(batch)
        except Exception as e:
            log.error("spool %s: commit failed: %s", self.path, e)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = StoreError(f"spool {self.path.name}: {e}")
            outcomes = [(future, None, error) for _, future, _ in batch]
        sqlite_api.settle_threadsafe(outcomes)


def _row_to_message(row: tuple[Any, ...]) -> Message:
    return Message(
        id=row[0],
        tenant=row[1],
        source=row[2],
        mail_from=row[3],
        smtp_utf8=bool(row[4]),
        created_at=row[5],
        raw=row[6],
        stream=row[7],
    )


_MESSAGE_COLUMNS = "id, tenant, source, mail_from, smtp_utf8, created_at, raw, stream"
"""The ``messages`` columns, in the order ``_row_to_message`` reads them."""
TRANSACTIONAL_LANE = 0
BROADCAST_LANE = 1
"""``deliveries.lane``: claimed in this order (``gateway/streams.py``)."""


def _where_sql(where: DeliveryFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if where.message_id is not None:
        clauses.append("d.message_id = ?")
        args.append(where.message_id)
    if where.statuses:
        clauses.append(f"d.status IN ({','.join('?' * len(where.statuses))})")
        args.extend(s.value for s in where.statuses)
    if where.recipient is not None:
        clauses.append("d.recipient = ? COLLATE NOCASE")
        args.append(where.recipient.strip())
    if where.domain is not None:
        clauses.append("d.domain = ?")
        args.append(where.domain.strip().lower())
    if where.tenant is not None:
        clauses.append("m.tenant = ?")
        args.append(where.tenant)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


class SqliteStore(Store):
    """SQLite spool over one or more shard files.

    :param directory: the spool directory.
    :param write_shard: the shard this process writes new messages to.
    :param shards: the shards this process claims deliveries from (default: just
        ``write_shard``); ``None`` with ``all_shards=True`` opens every file present (CLI).
    """

    def __init__(
        self,
        directory: Path,
        *,
        write_shard: int = 0,
        shards: Sequence[int] | None = None,
        all_shards: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.write_shard = write_shard
        if all_shards:
            numbers = set(existing_shards(self.directory)) | {write_shard}
        else:
            numbers = set(shards if shards is not None else [write_shard]) | {write_shard}
        self._writers = {n: _Writer(shard_path(self.directory, n)) for n in sorted(numbers)}
        self._claim_cursor = 0
        # Tenant-wide data (suppressions) is shared by all workers; see sqlite_api.
        self._tenants = _Writer(
            self.directory / "tenants.db",
            schema=TENANTS_SCHEMA,
            migrate=sqlite_migrations.migrate_tenants,
        )
        self._reader = sqlite_api.ShardReader(self.directory, self._shard_files)
        # Per-delivery suppression checks read tenants.db on their own thread and connection:
        # a WAL reader never waits behind the writer, nor behind the API's slow listings.
        tenants_db = [self.directory / "tenants.db"]
        self._suppression_reader = sqlite_api.ShardReader(self.directory, lambda: tenants_db)

    @property
    def shards(self) -> list[int]:
        return list(self._writers)

    def stats(self) -> dict[str, int]:
        """Commits and operations so far, summed over shards: their ratio is the batching;
        ``unsynced_commits`` held only claims and were not fsync'd themselves."""
        return {
            "commits": sum(w.commits for w in self._writers.values()),
            "unsynced_commits": sum(w.unsynced_commits for w in self._writers.values()),
            "operations": sum(w.operations for w in self._writers.values()),
        }

    async def open(self) -> None:
        for writer in [*self._writers.values(), self._tenants]:
            await asyncio.to_thread(writer.start)
        self._reader.start()
        self._suppression_reader.start()

    async def close(self) -> None:
        await asyncio.to_thread(self._reader.stop)
        await asyncio.to_thread(self._suppression_reader.stop)
        for writer in [*self._writers.values(), self._tenants]:
            await asyncio.to_thread(writer.stop)

    async def _on(
        self, shard: int, operation: Callable[[sqlite3.Connection], T], sync: Sync = "now"
    ) -> T:
        try:
            writer = self._writers[shard]
        except KeyError:
            raise StoreError(f"shard {shard} is not open in this process") from None
        return await writer.submit(operation, sync)

    async def _on_all(
        self, operation: Callable[[sqlite3.Connection, int], T], sync: Sync = "now"
    ) -> list[T]:
        return list(
            await asyncio.gather(
                *(self._on(n, lambda conn, n=n: operation(conn, n), sync) for n in self._writers)  # type: ignore[misc]
            )
        )

    claims_on_enqueue = True

    async def enqueue(
        self,
        message: Message,
        recipients: Sequence[str],
        *,
        expires_at: float,
        not_before: float | None = None,
        meta: MessageMeta | None = None,
        idempotency: IdempotencyClaim | None = None,
        broadcast: bool = False,
    ) -> list[Delivery]:
        due = message.created_at if not_before is None else not_before
        insert = self._insert_op(
            message,
            recipients,
            status=DeliveryStatus.QUEUED,
            due=due,
            expires_at=expires_at,
            lane=BROADCAST_LANE if broadcast else TRANSACTIONAL_LANE,
            meta=meta,
            not_before=not_before,
            idempotency=idempotency,
        )
        return await self._on(self.write_shard, insert)

    async def enqueue_claimed(
        self,
        message: Message,
        recipients: Sequence[str],
        *,
        expires_at: float,
        meta: MessageMeta | None = None,
        idempotency: IdempotencyClaim | None = None,
    ) -> list[Delivery]:
        # ``sending`` from the start: a crash before the outcome is recorded leaves them to
        # ``recover``, exactly like deliveries claimed a moment after being queued.
        insert = self._insert_op(
            message,
            recipients,
            status=DeliveryStatus.SENDING,
            due=message.created_at,
            expires_at=expires_at,
            lane=TRANSACTIONAL_LANE,
            meta=meta,
            not_before=None,
            idempotency=idempotency,
        )
        return await self._on(self.write_shard, insert)

    def _insert_op(
        self,
        message: Message,
        recipients: Sequence[str],
        *,
        status: DeliveryStatus,
        due: float,
        expires_at: float,
        lane: int,
        meta: MessageMeta | None,
        not_before: float | None,
        idempotency: IdempotencyClaim | None,
    ) -> Callable[[sqlite3.Connection], list[Delivery]]:
        shard = self.write_shard
        message_row = (
            message.id,
            message.tenant,
            message.source,
            message.mail_from,
            int(message.smtp_utf8),
            message.created_at,
            message.raw,
            message.stream,
        )

        def insert(conn: sqlite3.Connection) -> list[Delivery]:
            conn.execute(_INSERT_MESSAGE, message_row)
            deliveries = []
            for recipient in recipients:
                cursor = conn.execute(
                    _INSERT_DELIVERY,
                    (
                        message.id,
                        recipient,
                        recipient.rpartition("@")[2].lower(),
                        status.value,
                        due,
                        expires_at,
                        message.created_at,
                        lane,
                    ),
                )
                assert cursor.lastrowid is not None
                deliveries.append(
                    Delivery(
                        id=cursor.lastrowid,
                        message_id=message.id,
                        recipient=recipient,
                        status=status,
                        next_attempt_at=due,
                        expires_at=expires_at,
                        updated_at=message.created_at,
                        shard=shard,
                        broadcast=lane == BROADCAST_LANE,
                    )
                )
            if meta is not None or not_before is not None:
                sqlite_api.insert_meta(conn, message.id, meta or MessageMeta(), not_before)
            if idempotency is not None:
                sqlite_api.insert_idempotency(conn, idempotency, message.id, message.created_at)
            return deliveries

        return insert

    async def recover(self, now: float) -> int:
        def requeue(conn: sqlite3.Connection, shard: int) -> int:
            cursor = conn.execute(
                "UPDATE deliveries SET status = ?, next_attempt_at = ?, updated_at = ?,"
                " last_error = 'interrupted: the gateway stopped during this attempt'"
                " WHERE status = ?",
                (DeliveryStatus.DEFERRED.value, now, now, DeliveryStatus.SENDING.value),
            )
            return cursor.rowcount

        return sum(await self._on_all(requeue))

    async def claim(
        self, now: float, limit: int, *, broadcast_limit: int | None = None
    ) -> list[Claimed]:
        claimed: list[Claimed] = []
        broadcast = limit if broadcast_limit is None else broadcast_limit
        shards = self.shards
        # Rotate the starting shard so a busy shard cannot starve the others.
        self._claim_cursor = (self._claim_cursor + 1) % len(shards)
        for shard in shards[self._claim_cursor :] + shards[: self._claim_cursor]:
            if len(claimed) >= limit:
                break
            # A claim need not survive a crash: start-up recovery requeues claimed deliveries,
            # and a lost claim leaves them queued, the same thing.
            operation = _claim_op(now, limit - len(claimed), shard, max(0, broadcast))
            more = await self._on(shard, operation, sync="none")
            broadcast -= sum(1 for c in more if c.delivery.broadcast)
            claimed.extend(more)
        return claimed

    async def complete(self, updates: Sequence[DeliveryUpdate], now: float) -> None:
        by_shard: dict[int, list[DeliveryUpdate]] = {}
        for update in updates:
            by_shard.setdefault(update.shard, []).append(update)

        def apply(batch: list[DeliveryUpdate]) -> Callable[[sqlite3.Connection], None]:
            def operation(conn: sqlite3.Connection) -> None:
                for u in batch:
                    cursor = conn.execute(
                        "UPDATE deliveries SET status = ?, next_attempt_at = ?, last_error = ?,"
                        " provider = ?, provider_message_id = ?, updated_at = ?,"
                        " attempts = attempts + ? WHERE id = ?",
                        (
                            u.status.value,
                            u.next_attempt_at,
                            u.last_error,
                            u.provider,
                            u.provider_message_id,
                            now,
                            int(bool(u.attempts)),
                            u.delivery_id,
                        ),
                    )
                    if cursor.rowcount == 0:
                        # Deleted by an operator while it was being sent: nothing to record.
                        log.info("delivery %s is gone; its outcome is dropped", u.delivery_id)
                        continue
                    for a in u.attempts:
                        conn.execute(
                            "INSERT INTO attempts (delivery_id, at, provider, outcome, detail)"
                            " VALUES (?, ?, ?, ?, ?)",
                            (u.delivery_id, a.at, a.provider, a.outcome, a.detail),
                        )

            return operation

        # Durable before this returns, but no client is waiting: it may share the next fsync.
        await asyncio.gather(*(self._on(s, apply(b), sync="shared") for s, b in by_shard.items()))

    async def next_due(self) -> float | None:
        def earliest(conn: sqlite3.Connection, shard: int) -> float | None:
            row = conn.execute(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE status IN (?, ?)", _WAITING
            ).fetchone()
            return None if row is None else row[0]

        # A read: nothing to make durable, and it must not cut short a batch that waits.
        found = [t for t in await self._on_all(earliest, sync="none") if t is not None]
        return min(found) if found else None

    async def get_message(self, message_id: str) -> Message | None:
        def select(conn: sqlite3.Connection, shard: int) -> Message | None:
            row = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?",
                (message_id,),
            ).fetchone()
            return None if row is None else _row_to_message(row)

        found = [m for m in await self._on_all(select) if m is not None]
        return found[0] if found else None

    async def list_deliveries(self, where: DeliveryFilter) -> list[Delivery]:
        clause, args = _where_sql(where)
        columns = ", ".join(f"d.{c.strip()}" for c in _DELIVERY_COLUMNS.split(","))

        def select(conn: sqlite3.Connection, shard: int) -> list[Delivery]:
            rows = conn.execute(
                f"SELECT {columns} FROM deliveries d JOIN messages m ON m.id = d.message_id"
                f"{clause} ORDER BY d.message_id DESC, d.id LIMIT ?",
                [*args, where.limit],
            ).fetchall()
            return [_row_to_delivery(r, shard) for r in rows]

        merged = [d for found in await self._on_all(select) for d in found]
        merged.sort(key=lambda d: (d.message_id, -d.id), reverse=True)
        return merged[: where.limit]

    async def attempts(self, delivery: Delivery) -> list[Attempt]:
        def select(conn: sqlite3.Connection) -> list[Attempt]:
            rows = conn.execute(
                "SELECT at, provider, outcome, detail FROM attempts"
                " WHERE delivery_id = ? ORDER BY id",
                (delivery.id,),
            ).fetchall()
            return [Attempt(at=r[0], provider=r[1], outcome=r[2], detail=r[3]) for r in rows]

        return await self._on(delivery.shard, select)

    async def retry_now(self, where: DeliveryFilter, now: float) -> int:
        clause, args = _where_sql(where)
        extra = " AND " if clause else " WHERE "

        def update(conn: sqlite3.Connection, shard: int) -> int:
            cursor = conn.execute(
                "UPDATE deliveries SET status = ?, next_attempt_at = ?, updated_at = ?,"
                " expires_at = MAX(expires_at, ?) WHERE id IN (SELECT d.id FROM deliveries d"
                f" JOIN messages m ON m.id = d.message_id{clause}{extra}d.status NOT IN (?, ?, ?))",
                [
                    DeliveryStatus.DEFERRED.value,
                    now,
                    now,
                    now + 3600,
                    *args,
                    DeliveryStatus.DELIVERED.value,
                    DeliveryStatus.SENDING.value,
                    # Skipped means suppressed on purpose: a retry must not override that.
                    DeliveryStatus.SKIPPED.value,
                ],
            )
            return cursor.rowcount

        return sum(await self._on_all(update))

    async def delete(self, where: DeliveryFilter) -> int:
        clause, args = _where_sql(where)

        def remove(conn: sqlite3.Connection, shard: int) -> int:
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT d.id FROM deliveries d JOIN messages m ON m.id = d.message_id{clause}",
                    args,
                )
            ]
            for chunk_start in range(0, len(ids), 500):
                chunk = ids[chunk_start : chunk_start + 500]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM attempts WHERE delivery_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM deliveries WHERE id IN ({marks})", chunk)
            conn.execute(
                "DELETE FROM messages WHERE NOT EXISTS"
                " (SELECT 1 FROM deliveries d WHERE d.message_id = messages.id)"
            )
            sqlite_api.delete_orphans(conn)
            return len(ids)

        return sum(await self._on_all(remove))

    async def purge(self, before: float, *, batch: int = 500) -> int:
        total = 0
        while True:  # batch by batch, so other writes get the writer thread in between
            purged = sum(
                await self._on_all(lambda conn, _: sqlite_api.purge_messages(conn, before, batch))
            )
            total += purged
            if purged == 0:
                return total

    async def counts(self) -> dict[DeliveryStatus, int]:
        def count(conn: sqlite3.Connection, shard: int) -> list[tuple[str, int]]:
            return conn.execute(
                "SELECT status, COUNT(*) FROM deliveries GROUP BY status"
            ).fetchall()

        totals = dict.fromkeys(DeliveryStatus, 0)
        for rows in await self._on_all(count):
            for status, n in rows:
                totals[DeliveryStatus(status)] += n
        return totals

    # --- HTTP API (queries in sqlite_api) ---------------------------------------------------

    async def mark_delivery(
        self,
        message_id: str,
        delivery_id: int,
        status: DeliveryStatus,
        detail: str,
        now: float,
    ) -> bool:
        sql = (
            "UPDATE deliveries SET status = ?, last_error = ?, updated_at = ?"
            " WHERE id = ? AND message_id = ? AND status IN (?, ?)"
        )
        args = (
            status.value,
            detail,
            now,
            delivery_id,
            message_id,
            DeliveryStatus.DELIVERED.value,
            status.value,
        )

        def update(conn: sqlite3.Connection, shard: int) -> bool:
            return conn.execute(sql, args).rowcount > 0

        if any(await self._on_all(update)):
            return True
        # The message may sit in another worker's shard: one short write there, under
        # SQLite's own locking (as the CLI does).
        others = [
            shard_path(self.directory, n)
            for n in existing_shards(self.directory)
            if n not in self._writers
        ]
        return bool(others) and await asyncio.to_thread(_update_elsewhere, others, sql, args)

    def _shard_files(self) -> list[Path]:
        return [shard_path(self.directory, n) for n in existing_shards(self.directory)]

    async def find_idempotency(self, tenant: str, key: str, now: float) -> list[IdempotencyEntry]:
        found = await self._reader.read(
            lambda conn: sqlite_api.find_idempotency(conn, tenant, key, now)
        )
        return sqlite_api.merge_idempotency(found)

    async def purge_idempotency(self, now: float) -> int:
        return sum(await self._on_all(lambda conn, _: sqlite_api.purge_idempotency(conn, now)))

    async def add_suppressions(self, entries: Sequence[Suppression]) -> int:
        return await self._tenants.submit(lambda conn: sqlite_api.add_suppressions(conn, entries))

    async def remove_suppression(self, tenant: str, address: str, scope: str | None = None) -> bool:
        return await self._tenants.submit(
            lambda conn: sqlite_api.remove_suppression(conn, tenant, address, scope)
        )

    async def list_suppressions(
        self,
        tenant: str,
        *,
        reason: SuppressionReason | None = None,
        scope: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Suppression]:
        found = await self._suppression_reader.read(
            lambda conn: sqlite_api.list_suppressions(conn, tenant, reason, scope, after, limit)
        )
        return found[0] if found else []

    async def suppressed(
        self, tenant: str, addresses: Sequence[str], scopes: Sequence[str] = (TENANT_SCOPE,)
    ) -> dict[str, Suppression]:
        if not addresses or not scopes:
            return {}
        # A read: through the reader, never the writer (whose BEGIN IMMEDIATE would take
        # tenants.db's write lock from every other worker for every API send).
        found = await self._suppression_reader.read(
            lambda conn: sqlite_api.suppressed(conn, tenant, addresses, scopes)
        )
        return found[0] if found else {}

    async def consume(
        self, key: str, amount: int, limit: int, *, expires_at: float, now: float
    ) -> bool:
        added = await self._tenants.submit(
            lambda conn: sqlite_api.add_to_counter(conn, key, amount, limit, expires_at, now)
        )
        return added is not None

    async def add_to_counter(self, key: str, amount: int, *, expires_at: float, now: float) -> int:
        value = await self._tenants.submit(
            lambda conn: sqlite_api.add_to_counter(conn, key, amount, None, expires_at, now)
        )
        assert value is not None
        return value

    async def counter(self, key: str, now: float) -> int:
        found = await self._suppression_reader.read(lambda conn: sqlite_api.counter(conn, key, now))
        return found[0] if found else 0

    async def counters(self, keys: Sequence[str], now: float) -> dict[str, int]:
        if not keys:
            return {}
        found = await self._suppression_reader.read(
            lambda conn: sqlite_api.counters(conn, keys, now)
        )
        return found[0] if found else dict.fromkeys(keys, 0)

    async def set_flag(self, key: str, value: str) -> None:
        await self._tenants.submit(lambda conn: sqlite_api.set_flag(conn, key, value))

    async def clear_flag(self, key: str) -> bool:
        return await self._tenants.submit(lambda conn: sqlite_api.clear_flag(conn, key))

    async def flags(self, prefix: str) -> dict[str, str]:
        found = await self._suppression_reader.read(lambda conn: sqlite_api.flags(conn, prefix))
        return found[0] if found else {}

    async def first_sighting(self, key: str, *, expires_at: float, now: float) -> bool:
        return await self._tenants.submit(
            lambda conn: sqlite_api.first_sighting(conn, key, expires_at, now)
        )

    async def find_suppression(
        self, tenant: str, address: str, scopes: Sequence[str] = (TENANT_SCOPE,)
    ) -> Suppression | None:
        found = await self._suppression_reader.read(
            lambda conn: sqlite_api.find_suppression(conn, tenant, address, scopes)
        )
        return found[0] if found else None

    async def list_messages(self, query: MessageQuery) -> list[MessageRecord]:
        found = await self._reader.read(lambda conn: sqlite_api.list_messages(conn, query))
        merged = sorted((r for records in found for r in records), key=lambda r: r.id, reverse=True)
        return merged[: query.limit]

    async def message_record(self, tenant: str, message_id: str) -> MessageRecord | None:
        found = await self._reader.read(
            lambda conn: sqlite_api.message_record(conn, tenant, message_id)
        )
        return next((r for r in found if r is not None), None)

    async def timeline(self, message_id: str) -> list[MessageEvent]:
        found = await self._reader.read(lambda conn: sqlite_api.timeline(conn, message_id))
        return sorted((e for events in found for e in events), key=lambda e: e.at)

    async def record_event(self, event: MessageEvent) -> None:
        await self._on(self.write_shard, lambda conn: sqlite_api.insert_event(conn, event))

    async def delivery_stats(
        self, tenant: str, since: float, until: float, *, stream: str | None = None
    ) -> DeliveryStats:
        found = await self._reader.read(
            lambda conn: sqlite_api.delivery_stats(conn, tenant, since, until, stream)
        )
        return sqlite_api.merge_stats(found)

    # --- operations: health, metrics, event webhooks (SQL in sqlite_webhooks) ----------------

    async def ping(self) -> None:
        await self._tenants.submit(lambda conn: conn.execute("SELECT 1").fetchone())
        await self._on(self.write_shard, lambda conn: conn.execute("SELECT 1").fetchone())

    async def durability(self) -> tuple[bool, str]:
        return True, "SQLite WAL: every accepted message fsync'd before 250"

    async def oldest_waiting(self) -> float | None:
        def oldest(conn: sqlite3.Connection, shard: int) -> float | None:
            row = conn.execute(
                "SELECT MIN(m.created_at) FROM deliveries d JOIN messages m ON m.id = d.message_id"
                " WHERE d.status IN (?, ?, ?)",
                (*_WAITING, DeliveryStatus.SENDING.value),
            ).fetchone()
            return None if row is None else row[0]

        found = [t for t in await self._on_all(oldest) if t is not None]
        return min(found) if found else None

    async def enqueue_webhooks(self, events: Sequence[WebhookEvent]) -> None:
        if events:
            await self._tenants.submit(lambda conn: sqlite_webhooks.insert(conn, list(events)))

    async def claim_webhooks(
        self, now: float, limit: int, lease_until: float
    ) -> list[WebhookEvent]:
        return await self._tenants.submit(
            lambda conn: sqlite_webhooks.claim(conn, now, limit, lease_until)
        )

    async def record_webhook_attempt(
        self, event_id: str, attempt: WebhookAttempt, *, next_attempt_at: float = 0.0
    ) -> None:
        await self._tenants.submit(
            lambda conn: sqlite_webhooks.record_attempt(conn, event_id, attempt, next_attempt_at)
        )

    async def list_webhook_events(
        self,
        tenant: str | None,
        *,
        status: WebhookStatus | None = None,
        endpoint: str | None = None,
        before_id: str | None = None,
        limit: int = 50,
    ) -> list[WebhookEvent]:
        return await self._tenants.submit(
            lambda conn: sqlite_webhooks.list_events(
                conn, tenant, status, endpoint, before_id, limit
            )
        )

    async def webhook_event(
        self, event_id: str
    ) -> tuple[WebhookEvent, list[WebhookAttempt]] | None:
        return await self._tenants.submit(lambda conn: sqlite_webhooks.get(conn, event_id))

    async def replay_webhook(self, event_id: str, now: float) -> WebhookEvent | None:
        return await self._tenants.submit(lambda conn: sqlite_webhooks.replay(conn, event_id, now))

    async def webhook_counts(self) -> dict[WebhookStatus, int]:
        return await self._tenants.submit(sqlite_webhooks.counts)


def _update_elsewhere(paths: list[Path], sql: str, args: tuple[Any, ...]) -> bool:
    for path in paths:
        conn = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            if conn.execute(sql, args).rowcount > 0:
                return True
        finally:
            conn.close()
    return False


_INSERT_MESSAGE = f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_DELIVERY = (
    "INSERT INTO deliveries (message_id, recipient, domain, status,"
    " next_attempt_at, expires_at, updated_at, lane) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_CLAIM_LANE = (
    "UPDATE deliveries SET status = ?, updated_at = ? WHERE id IN ("
    " SELECT id FROM deliveries WHERE status IN ('queued', 'deferred') AND lane = ?"
    " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)"
    f" RETURNING {_DELIVERY_COLUMNS}"
)
"""Literal statuses: SQLite uses the partial index ``deliveries_lane_due`` only when the
query's WHERE visibly implies the index's."""


def _claim_op(
    now: float, limit: int, shard: int, broadcast_limit: int
) -> Callable[[sqlite3.Connection], list[Claimed]]:
    def operation(conn: sqlite3.Connection) -> list[Claimed]:
        sending = DeliveryStatus.SENDING.value
        rows = conn.execute(_CLAIM_LANE, (sending, now, TRANSACTIONAL_LANE, now, limit)).fetchall()
        more = min(limit - len(rows), broadcast_limit)
        if more > 0:
            rows += conn.execute(_CLAIM_LANE, (sending, now, BROADCAST_LANE, now, more)).fetchall()
        if not rows:
            return []
        deliveries = [_row_to_delivery(r, shard) for r in rows]
        message_ids = sorted({d.message_id for d in deliveries})
        messages: dict[str, Message] = {}
        for start in range(0, len(message_ids), 500):
            chunk = message_ids[start : start + 500]
            for row in conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                f" WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                messages[row[0]] = _row_to_message(row)
        deliveries.sort(key=lambda d: (d.broadcast, d.next_attempt_at))
        return [Claimed(d, messages[d.message_id]) for d in deliveries]

    return operation
