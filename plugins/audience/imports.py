"""CSV imports into a list: idempotent by content hash, streamed, applied in batches of
checked rows, one transaction per batch, with a per-row error log (``errors.csv``).

Modes: ``subscribe`` (active subscriptions; needs a consent attestation — who, which
statement, when and where it was collected — recorded in the consent log of every row) and
``suppress`` (every address goes on the tenant's suppression list). Whatever the mode, an
import never re-subscribes a contact who unsubscribed from the list (``unsubscribed_kept``)
and never adds an address that is suppressed or was erased (``suppressed``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import sqlalchemy as sa
from gateway_plugins.audience import schema
from gateway_plugins.audience.consent import hash_identifier, hash_statement
from gateway_plugins.audience.csv_rows import (
    AttributeType,
    BadRow,
    CheckedRow,
    ImportFormatError,
    RowReader,
)
from gateway_plugins.audience.store import AudienceStore, row_fields
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

ImportMode = Literal["subscribe", "suppress"]
ImportStatus = Literal["running", "done", "failed"]
BATCH = 5000
ERROR_CODES = (
    "invalid_email",
    "missing_email",
    "duplicate_in_file",
    "column_count",
    "field_too_long",
    "bad_attribute_type",
    "bad_timezone",
    "suppressed",
    "unsubscribed_kept",
    "role_address",
)
SuppressedLookup = Callable[[str, Sequence[str]], Awaitable[set[str]]]
"""``(tenant, addresses) -> the folded addresses among them that are suppressed``."""
Suppress = Callable[[str, Sequence[str], str], Awaitable[None]]
"""``(tenant, addresses, detail)``: add them to the tenant's suppression list."""


class Attestation(msgspec.Struct, kw_only=True):
    """Who vouches that the people in the file consented, to what, when and where."""

    attested_by: str
    statement: str
    statement_version: str = ""
    collected_at: float | None = None
    collected_where: str = ""
    """The form, event or page where consent was collected (kept as the consent log's
    form id)."""


class ImportOptions(msgspec.Struct, kw_only=True):
    mode: ImportMode = "subscribe"
    attestation: Attestation | None = None
    mapping: dict[str, str] = msgspec.field(default_factory=dict)
    """Column name → ``email``, ``name``, ``locale``, ``timezone``, ``attributes.<name>`` or
    ``ignore``; unmapped columns go by their name."""
    types: dict[str, AttributeType] = msgspec.field(default_factory=dict)
    """Declared attribute types; undeclared ones are inferred per value."""
    file_name: str = ""


class ImportRecord(msgspec.Struct, kw_only=True):
    id: int
    tenant: str
    list_id: int
    mode: ImportMode
    content_hash: str
    file_name: str
    status: ImportStatus
    counts: dict[str, int]
    error: str
    columns: list[str]
    attested_by: str
    created_at: float
    finished_at: float | None


def empty_counts() -> dict[str, int]:
    counts = dict.fromkeys(
        ("rows", "imported", "created", "updated", "subscribed", "skipped", "warnings"), 0
    )
    counts.update(dict.fromkeys(ERROR_CODES, 0))
    return counts


def _record(row: sa.Row[Any]) -> ImportRecord:
    return msgspec.convert(row_fields(row), ImportRecord)


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Importer:
    """Runs imports against one audience store."""

    def __init__(
        self,
        store: AudienceStore,
        *,
        suppressed: SuppressedLookup,
        suppress: Suppress,
    ) -> None:
        self.store = store
        self.suppressed = suppressed
        self.suppress = suppress

    # --- the import record ----------------------------------------------------------------------

    async def start(
        self,
        tenant: str,
        list_id: int,
        content_hash: str,
        columns: list[str],
        options: ImportOptions,
    ) -> tuple[ImportRecord, bool]:
        """The import's record, and whether it is new (``False``: the same file was already
        imported into this list in this mode — the earlier import is the answer). A failed
        earlier import is run again."""
        await self.store.get_list(tenant, list_id)
        t = schema.imports.c
        values = {
            "tenant": tenant,
            "list_id": list_id,
            "mode": options.mode,
            "content_hash": content_hash,
            "file_name": options.file_name[:255],
            "status": "running",
            "counts": empty_counts(),
            "error": "",
            "columns": columns,
            "attested_by": options.attestation.attested_by if options.attestation else "",
            "created_at": self.store.clock.now(),
            "finished_at": None,
        }
        async with self.store.engine.begin() as conn:
            try:
                async with conn.begin_nested():
                    row = (
                        await conn.execute(
                            sa.insert(schema.imports).values(values).returning(*schema.imports.c)
                        )
                    ).one()
                return _record(row), True
            except IntegrityError:
                pass
            same = (
                t.tenant == tenant,
                t.list_id == list_id,
                t.mode == options.mode,
                t.content_hash == content_hash,
            )
            existing = _record((await conn.execute(sa.select(schema.imports).where(*same))).one())
            if existing.status != "failed":
                return existing, False
            for table in (schema.import_errors, schema.import_keys):
                await conn.execute(sa.delete(table).where(table.c.import_id == existing.id))
            row = (
                await conn.execute(
                    sa.update(schema.imports)
                    .where(t.id == existing.id)
                    .values(values)
                    .returning(*schema.imports.c)
                )
            ).one()
            return _record(row), True

    async def get(self, tenant: str, import_id: int) -> ImportRecord | None:
        t = schema.imports.c
        async with self.store.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(schema.imports).where(t.tenant == tenant, t.id == import_id)
                )
            ).one_or_none()
        return _record(row) if row is not None else None

    async def errors(
        self, import_id: int, *, after: tuple[int, str] = (0, ""), limit: int = 1000
    ) -> list[tuple[int, str, str, list[str]]]:
        """(row, code, message, original fields) in row order, a page at a time after the
        (row, code) ``after``."""
        e = schema.import_errors.c
        async with self.store.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(e.row, e.code, e.message, e.fields)
                .where(e.import_id == import_id, sa.tuple_(e.row, e.code) > sa.tuple_(*after))
                .order_by(e.row, e.code)
                .limit(limit)
            )
            return [(r.row, r.code, r.message, list(r.fields)) for r in rows]

    async def _finish(self, record: ImportRecord, status: ImportStatus, error: str = "") -> None:
        async with self.store.engine.begin() as conn:
            keys = schema.import_keys.c
            await conn.execute(sa.delete(schema.import_keys).where(keys.import_id == record.id))
            await conn.execute(
                sa.update(schema.imports)
                .where(schema.imports.c.id == record.id)
                .values(
                    status=status,
                    error=error[:2000],
                    counts=record.counts,
                    finished_at=self.store.clock.now(),
                )
            )
        record.status, record.error = status, error

    # --- running ------------------------------------------------------------------------------

    async def run(
        self,
        record: ImportRecord,
        reader: RowReader,
        options: ImportOptions,
        on_progress: Callable[[ImportRecord], None] | None = None,
    ) -> ImportRecord:
        """Apply every row of ``reader`` (which this closes) and finish the record."""
        upcoming: asyncio.Future[list[CheckedRow | BadRow]] | None = None
        try:
            salt = await self.store.salt(record.tenant)
            erased = await self._has_erased(record.tenant)
            # Parse the next batch in a thread while this one is written: the two overlap.
            upcoming = asyncio.ensure_future(asyncio.to_thread(reader.batch, BATCH))
            while batch := await upcoming:
                upcoming = asyncio.ensure_future(asyncio.to_thread(reader.batch, BATCH))
                await self._apply(record, batch, options, salt if erased else None)
                if on_progress is not None:
                    on_progress(record)
        except ImportFormatError as e:
            await self._finish(record, "failed", str(e))
            return record
        except BaseException as e:
            await asyncio.shield(self._finish(record, "failed", f"interrupted: {e!r}"))
            raise
        finally:
            if upcoming is not None and not upcoming.done():
                await asyncio.wait([upcoming])  # the thread must finish before the file closes
            reader.close()
        await self._finish(record, "done")
        await self.store.analyze()
        return record

    async def _has_erased(self, tenant: str) -> bool:
        er = schema.erased.c
        async with self.store.engine.connect() as conn:
            found = await conn.scalar(sa.select(er.email_hash).where(er.tenant == tenant).limit(1))
        return found is not None

    async def _apply(
        self,
        record: ImportRecord,
        batch: list[CheckedRow | BadRow],
        options: ImportOptions,
        salt: bytes | None,
    ) -> None:
        """Write one batch; ``salt`` is given when the tenant has erased contacts to check."""
        counts = record.counts
        counts["rows"] += len(batch)
        by_row: dict[tuple[int, str], dict[str, Any]] = {}
        errors: list[dict[str, Any]] = []

        def fail(row: int, raw: list[str], code: str, message: str) -> None:
            counts[code] += 1
            same = by_row.get((row, code))
            if same is not None:  # one entry per row and code; the messages joined
                same["message"] = f"{same['message']}; {message}"[:500]
                return
            entry = {"import_id": record.id, "row": row, "code": code, "message": message[:500]}
            entry["fields"] = raw
            by_row[(row, code)] = entry
            errors.append(entry)

        good: list[CheckedRow] = []
        for item in batch:
            if isinstance(item, BadRow):
                for problem in item.problems:
                    fail(item.row, item.raw, problem.code, problem.message)
                counts["skipped"] += 1
            else:
                good.append(item)
        # One transaction per batch: what this import has seen and what it wrote go
        # together (a crash loses both), and a commit is one disk flush, not several.
        async with self.store.engine.begin() as conn:
            good = await self._drop_duplicates(conn, record, good, fail, counts)
            good = await self._drop_suppressed(conn, record.tenant, good, salt, fail, counts)
            for item in good:
                for warning in item.warnings:
                    fail(item.row, item.raw, warning.code, warning.message)
                    counts["warnings"] += 1
            if options.mode == "suppress":
                await self.suppress(record.tenant, [r.key for r in good], f"import {record.id}")
                counts["imported"] += len(good)
            else:
                ids = await self._upsert_contacts(conn, record.tenant, good, counts)
                kept = await self._subscribe(conn, record, good, ids, options, counts)
                for item in kept:
                    fail(
                        item.row,
                        item.raw,
                        "unsubscribed_kept",
                        "unsubscribed from this list; kept so",
                    )
            await self._save(conn, record, errors)

    async def _drop_duplicates(
        self,
        conn: AsyncConnection,
        record: ImportRecord,
        rows: list[CheckedRow],
        fail: Callable[[int, list[str], str, str], None],
        counts: dict[str, int],
    ) -> list[CheckedRow]:
        """The rows whose address this import has not seen before (in this batch or an
        earlier one); the others are ``duplicate_in_file``. What was seen is kept in the
        database, so memory does not grow with the file."""
        first: dict[bytes, CheckedRow] = {}
        repeated: list[CheckedRow] = []
        for r in rows:
            digest = hashlib.blake2b(r.key.encode(), digest_size=16).digest()
            if digest in first:
                repeated.append(r)
            else:
                first[digest] = r
        if first:
            k = schema.import_keys.c
            # What comes back is what no earlier batch had.
            inserted = await self.store.insert_many(
                conn,
                schema.import_keys,
                [{"import_id": record.id, "key_hash": d} for d in first],
                skip_conflicts=("import_id", "key_hash"),
                returning=(k.key_hash,),
            )
            fresh = {bytes(row.key_hash) for row in inserted}
            repeated += [r for d, r in first.items() if d not in fresh]
            kept = {id(r) for d, r in first.items() if d in fresh}
        else:
            kept = set()
        for r in repeated:
            fail(r.row, r.raw, "duplicate_in_file", f"{r.email} appears earlier")
            counts["skipped"] += 1
        return [r for r in rows if id(r) in kept]

    async def _drop_suppressed(
        self,
        conn: AsyncConnection,
        tenant: str,
        rows: list[CheckedRow],
        salt: bytes | None,
        fail: Callable[[int, list[str], str, str], None],
        counts: dict[str, int],
    ) -> list[CheckedRow]:
        if not rows:
            return rows
        blocked = await self.suppressed(tenant, [r.key for r in rows])
        if salt is not None:
            hashes = {hash_identifier(salt, r.key): r.key for r in rows}
            er = schema.erased.c
            found = await conn.execute(
                sa.select(er.email_hash).where(
                    er.tenant == tenant, self.store.member_of(er.email_hash, list(hashes))
                )
            )
            blocked |= {hashes[h] for h in found.scalars()}
        kept = []
        for r in rows:
            if r.key in blocked:
                fail(r.row, r.raw, "suppressed", "the address is suppressed or was erased")
                counts["skipped"] += 1
            else:
                kept.append(r)
        return kept

    async def _upsert_contacts(
        self, conn: Any, tenant: str, rows: list[CheckedRow], counts: dict[str, int]
    ) -> dict[str, int]:
        """Create or update the contacts of ``rows``; their ids by folded address."""
        if not rows:
            return {}
        c = schema.contacts.c
        existing = {
            r.email_key: r
            for r in await conn.execute(
                sa.select(c.id, c.email_key, c.name, c.locale, c.timezone, c.attributes).where(
                    c.tenant == tenant, self.store.member_of(c.email_key, [r.key for r in rows])
                )
            )
        }
        now = self.store.clock.now()
        updates, inserts = [], []
        for r in rows:
            old = existing.get(r.key)
            if old is None:
                inserts.append(
                    {"tenant": tenant, "email": r.email, "email_key": r.key,
                     "name": r.fields.get("name", ""), "locale": r.fields.get("locale", ""),
                     "timezone": r.fields.get("timezone", ""), "attributes": r.attributes,
                     "status": "active", "created_at": now, "updated_at": now}
                )  # fmt: skip
                continue
            updates.append(
                {"b_id": old.id,
                 "b_name": r.fields.get("name") or old.name,
                 "b_locale": r.fields.get("locale") or old.locale,
                 "b_timezone": r.fields.get("timezone") or old.timezone,
                 "b_attributes": {**old.attributes, **r.attributes},
                 "b_updated_at": now}
            )  # fmt: skip
        if updates:
            await conn.execute(
                sa.update(schema.contacts)
                .where(c.id == sa.bindparam("b_id"))
                .values(
                    name=sa.bindparam("b_name"),
                    locale=sa.bindparam("b_locale"),
                    timezone=sa.bindparam("b_timezone"),
                    attributes=sa.bindparam("b_attributes", type_=schema.Json),
                    updated_at=sa.bindparam("b_updated_at"),
                ),
                updates,
            )
        ids = {key: row.id for key, row in existing.items()}
        if inserts:
            found = await self.store.insert_many(
                conn,
                schema.contacts,
                inserts,
                skip_conflicts=("tenant", "email_key"),
                returning=(c.id, c.email_key),
            )
            ids.update({r.email_key: r.id for r in found})
            missing = [i["email_key"] for i in inserts if i["email_key"] not in ids]
            if missing:  # made meanwhile by someone else
                found = await conn.execute(
                    sa.select(c.id, c.email_key).where(
                        c.tenant == tenant, self.store.member_of(c.email_key, missing)
                    )
                )
                ids.update({r.email_key: r.id for r in found})
        counts["created"] += len(inserts)
        counts["updated"] += len(updates)
        counts["imported"] += len(rows)
        return ids

    async def _subscribe(
        self,
        conn: Any,
        record: ImportRecord,
        rows: list[CheckedRow],
        ids: dict[str, int],
        options: ImportOptions,
        counts: dict[str, int],
    ) -> list[CheckedRow]:
        """Active subscriptions for the rows; the rows kept unsubscribed."""
        if not rows:
            return []
        s = schema.subscriptions.c
        current = {
            r.contact_id: r.status
            for r in await conn.execute(
                sa.select(s.contact_id, s.status).where(
                    s.list_id == record.list_id,
                    self.store.member_of(s.contact_id, list(ids.values())),
                )
            )
        }
        now = self.store.clock.now()
        inserts, activate, kept = [], [], []
        for r in rows:
            contact_id = ids[r.key]
            status = current.get(contact_id)
            if status == "unsubscribed":
                kept.append(r)
            elif status is None:
                inserts.append(
                    {"tenant": record.tenant, "list_id": record.list_id, "contact_id": contact_id,
                     "status": "active", "source": "import", "created_at": now, "updated_at": now}
                )  # fmt: skip
            elif status == "pending":
                activate.append({"b_contact": contact_id})
        if inserts:
            await self.store.insert_many(conn, schema.subscriptions, inserts)
        if activate:
            await conn.execute(
                sa.update(schema.subscriptions)
                .where(s.list_id == record.list_id, s.contact_id == sa.bindparam("b_contact"))
                .values(status="active", source="import", updated_at=now),
                activate,
            )
        changed = [i["contact_id"] for i in inserts] + [a["b_contact"] for a in activate]
        if changed:
            attestation = options.attestation
            assert attestation is not None
            # One INSERT … SELECT per batch: the entries differ only in the contact, so the
            # database repeats them instead of binding 17 parameters per row.
            c = schema.contacts.c
            constant = {
                "tenant": record.tenant,
                "action": "subscribe",
                "list_id": record.list_id,
                "method": "import",
                "form_id": attestation.collected_where,
                "ip_hash": "",
                "user_agent_hash": "",
                "statement_version": attestation.statement_version,
                "statement_hash": hash_statement(attestation.statement),
                "collected_at": attestation.collected_at,
                "import_id": str(record.id),
                "attested_by": attestation.attested_by,
                "at": now,
            }
            log = schema.consent_log.c
            columns = [log.contact_id, *(log[name] for name in constant)]
            values = [
                sa.literal(v, type_=log[name].type).label(name) for name, v in constant.items()
            ]
            await conn.execute(
                sa.insert(schema.consent_log).from_select(
                    columns,
                    sa.select(c.id, *values).where(
                        c.tenant == record.tenant, self.store.member_of(c.id, changed)
                    ),
                )
            )
        counts["subscribed"] += len(changed)
        return kept

    async def _save(
        self, conn: AsyncConnection, record: ImportRecord, errors: list[dict[str, Any]]
    ) -> None:
        await self.store.insert_many(conn, schema.import_errors, errors)
        await conn.execute(
            sa.update(schema.imports)
            .where(schema.imports.c.id == record.id)
            .values(counts=record.counts)
        )
