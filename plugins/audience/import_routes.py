"""``POST /v1/lists/{id}/imports``, ``GET /v1/imports/{id}``, ``GET /v1/imports/{id}/errors.csv``.

The CSV is the request body (``text/csv``), streamed to a file under the data directory while
its SHA-256 is computed; the options are query parameters. The same file into the same list in
the same mode is the same import (200 with the earlier one); a new one answers 202 and runs in
the background — ``GET /v1/imports/{id}`` shows its counts growing (``status`` ``running``,
then ``done`` or ``failed``).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from gateway_plugins.audience import audience_of
from gateway_plugins.audience.csv_rows import ImportFormatError, RowReader
from gateway_plugins.audience.imports import (
    Attestation,
    ImportMode,
    ImportOptions,
    ImportRecord,
)
from gateway_plugins.audience.store import NotFound
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Stream

from gateway.api.auth import requires
from gateway.api.problems import Problem
from gateway.events import ContactEvent, publish_contact_event

_TARGETS = ("email", "name", "locale", "timezone", "ignore")
_TYPES = ("string", "number", "boolean")


class ImportView(msgspec.Struct, kw_only=True):
    id: int
    list_id: int
    mode: ImportMode
    status: str
    file_name: str
    content_hash: str
    counts: dict[str, int]
    """``rows``, ``imported``, ``created``, ``updated``, ``subscribed``, ``skipped``,
    ``warnings``, and one count per row code."""
    error: str
    created_at: dt.datetime
    finished_at: dt.datetime | None
    errors_url: str


def import_view(record: ImportRecord) -> ImportView:
    return ImportView(
        id=record.id,
        list_id=record.list_id,
        mode=record.mode,
        status=record.status,
        file_name=record.file_name,
        content_hash=record.content_hash,
        counts=record.counts,
        error=record.error,
        created_at=dt.datetime.fromtimestamp(record.created_at, dt.UTC),
        finished_at=(
            dt.datetime.fromtimestamp(record.finished_at, dt.UTC) if record.finished_at else None
        ),
        errors_url=f"/v1/imports/{record.id}/errors.csv",
    )


def _pairs(values: list[str] | None, field: str, allowed: tuple[str, ...] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, target = value.rpartition(":")
        if not sep or not name:
            raise Problem.invalid(field, f"{value!r}: give column:target")
        if allowed is not None and target not in allowed and not target.startswith("attributes."):
            raise Problem.invalid(
                field, f"{value!r}: the target is one of {', '.join(allowed)} or attributes.<name>"
            )
        out[name] = target
    return out


def options_from_query(
    mode: str,
    attested_by: str | None,
    statement: str | None,
    statement_version: str | None,
    collected_at: dt.datetime | None,
    collected_where: str | None,
    mapping: list[str] | None,
    types: list[str] | None,
    file_name: str | None,
) -> ImportOptions:
    if mode == "pending":
        raise Problem.invalid(
            "mode", "pending (confirmation mails) comes with the hosted pages; not available yet"
        )
    if mode not in ("subscribe", "suppress"):
        raise Problem.invalid("mode", "subscribe or suppress")
    attestation = None
    if mode == "subscribe":
        for name, value in (("attested_by", attested_by), ("statement", statement)):
            if not value:
                raise Problem.invalid(
                    name,
                    "subscribe mode needs a consent attestation: attested_by (who vouches), "
                    "statement (what people agreed to), collected_at and collected_where",
                )
        if collected_at is None:
            raise Problem.invalid("collected_at", "when the consent was collected (ISO 8601)")
        if not collected_where:
            raise Problem.invalid("collected_where", "where the consent was collected")
        attestation = Attestation(
            attested_by=str(attested_by)[:200],
            statement=str(statement),
            statement_version=(statement_version or "")[:100],
            collected_at=collected_at.timestamp(),
            collected_where=collected_where[:200],
        )
    type_pairs = _pairs(types, "type", None)
    for name, declared in type_pairs.items():
        if declared not in _TYPES:
            raise Problem.invalid("type", f"{name}: one of {', '.join(_TYPES)}")
    return msgspec.convert(
        {
            "mode": mode,
            "attestation": attestation,
            "mapping": _pairs(mapping, "map", _TARGETS),
            "types": type_pairs,
            "file_name": file_name or "",
        },
        ImportOptions,
    )


async def save_upload(chunks: AsyncIterator[bytes], directory: Path) -> tuple[Path, str]:
    """Stream the body to a new file in ``directory``; (path, SHA-256)."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    path = directory / f"upload-{uuid.uuid4().hex}.csv"
    digest = hashlib.sha256()
    handle = await asyncio.to_thread(path.open, "wb")
    try:
        pending = bytearray()
        async for chunk in chunks:
            digest.update(chunk)
            pending += chunk
            if len(pending) >= 1 << 20:
                await asyncio.to_thread(handle.write, bytes(pending))
                pending.clear()
        await asyncio.to_thread(handle.write, bytes(pending))
    except BaseException:
        handle.close()
        path.unlink(missing_ok=True)
        raise
    await asyncio.to_thread(handle.close)
    return path, digest.hexdigest()


def import_routes(gateway: Any) -> list[Any]:
    audience = audience_of(gateway)

    @post(
        "/v1/lists/{list_id:int}/imports",
        guards=[requires("admin")],
        tags=["audience"],
        summary="Import a CSV into a list (the body is the file)",
        request_max_body_size=audience.settings.max_import_size,
        status_code=202,
    )
    async def create_import(
        request: Request[Any, Any, Any],
        list_id: FromPath[int],
        mode: FromQuery[str] = "subscribe",
        attested_by: FromQuery[str | None] = None,
        statement: FromQuery[str | None] = None,
        statement_version: FromQuery[str | None] = None,
        collected_at: FromQuery[dt.datetime | None] = None,
        collected_where: FromQuery[str | None] = None,
        map: FromQuery[list[str] | None] = None,
        type: FromQuery[list[str] | None] = None,
        file_name: FromQuery[str | None] = None,
    ) -> Response[ImportView]:
        tenant = request.state.api_key.tenant
        options = options_from_query(
            mode, attested_by, statement, statement_version, collected_at, collected_where,
            map, type, file_name,
        )  # fmt: skip
        importer = audience.importer
        try:
            await importer.store.get_list(tenant, list_id)
        except NotFound as e:
            raise Problem(404, "not-found", "Not found", str(e)) from None
        path, content_hash = await save_upload(request.stream(), audience.import_dir)
        try:
            try:
                reader = await asyncio.to_thread(
                    RowReader, path, mapping=options.mapping, types=options.types
                )
            except ImportFormatError as e:
                raise Problem.invalid("body", str(e)) from None
            record, new = await importer.start(
                tenant, list_id, content_hash, reader.columns, options
            )
            if not new:
                reader.close()
                return Response(import_view(record), status_code=200)
        except BaseException:
            await asyncio.to_thread(path.unlink, True)
            raise

        async def work() -> None:
            try:
                await importer.run(record, reader, options)
            finally:
                await asyncio.to_thread(path.unlink, True)
            await publish_contact_event(
                gateway,
                ContactEvent(
                    type="imported",
                    tenant=tenant,
                    contact_id=0,
                    email="",
                    at=gateway.clock.now(),
                    list_id=list_id,
                    source="import",
                    data={"import_id": str(record.id), "status": record.status}
                    | {k: str(v) for k, v in record.counts.items() if v},
                ),
            )

        audience.run_in_background(work(), f"audience-import-{record.id}")
        return Response(import_view(record), status_code=202)

    @get(
        "/v1/imports/{import_id:int}",
        guards=[requires("read")],
        tags=["audience"],
        summary="An import's status and counts (they grow while it runs)",
    )
    async def show_import(request: Request[Any, Any, Any], import_id: FromPath[int]) -> ImportView:
        record = await audience.importer.get(request.state.api_key.tenant, import_id)
        if record is None:
            raise Problem(404, "not-found", "Not found", f"no import {import_id}")
        return import_view(record)

    @get(
        "/v1/imports/{import_id:int}/errors.csv",
        guards=[requires("read")],
        tags=["audience"],
        summary="The rows that were skipped or warned about: original columns + row, code, message",
        media_type="text/csv",
    )
    async def import_errors(request: Request[Any, Any, Any], import_id: FromPath[int]) -> Stream:
        importer = audience.importer
        record = await importer.get(request.state.api_key.tenant, import_id)
        if record is None:
            raise Problem(404, "not-found", "Not found", f"no import {import_id}")

        async def lines() -> AsyncIterator[bytes]:
            yield _csv_line([*record.columns, "row", "code", "message"])
            after = (0, "")
            while page := await importer.errors(record.id, after=after):
                yield b"".join(
                    _csv_line([*fields, str(row), code, message])
                    for row, code, message, fields in page
                )
                after = (page[-1][0], page[-1][1])
                if len(page) < 1000:
                    break

        return Stream(
            lines(),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="import-{import_id}-errors.csv"'
            },
        )

    return [create_import, show_import, import_errors]


def _csv_line(fields: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(fields)
    return out.getvalue().encode()
