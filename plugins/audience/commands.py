"""``gateway audience import FILE --list L``: the CSV import from the command line, with a
progress bar on standard error. It opens the audience database and the spool's suppression
list as configured, so it runs beside a running gateway (or without one)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from gateway_plugins.audience import spool_suppress, spool_suppressions
from gateway_plugins.audience.csv_rows import ImportFormatError, RowReader
from gateway_plugins.audience.engine import create_engine, migrate
from gateway_plugins.audience.imports import (
    Attestation,
    Importer,
    ImportOptions,
    ImportRecord,
    file_hash,
)
from gateway_plugins.audience.settings import load_settings
from gateway_plugins.audience.store import AudienceStore, NotFound

from gateway.clock import SystemClock
from gateway.config import Config

EXIT_FAILED = 1


def add_commands(commands: Any) -> None:
    audience = commands.add_parser("audience", help="the audience: contacts, lists, imports")
    sub = audience.add_subparsers(dest="audience_command", required=True)
    importing = sub.add_parser("import", help="import a CSV file into a list")
    importing.add_argument("file", type=Path, help="the CSV file (UTF-8, , ; or tab)")
    importing.add_argument("--list", required=True, help="the list's id or name")
    importing.add_argument("--tenant", default="default", help="the tenant that owns the list")
    importing.add_argument(
        "--mode",
        choices=["subscribe", "suppress"],
        default="subscribe",
        help="subscribe to the list (needs the attestation) or suppress every address",
    )
    importing.add_argument("--attested-by", help="who vouches for the consent (subscribe mode)")
    importing.add_argument("--statement", help="what people agreed to (subscribe mode)")
    importing.add_argument("--statement-version", default="", help="the statement's version")
    importing.add_argument("--collected-at", help="when consent was collected (ISO 8601)")
    importing.add_argument("--collected-where", help="where consent was collected")
    importing.add_argument(
        "--map", action="append", default=[], metavar="COLUMN:TARGET", help="map a column"
    )
    importing.add_argument(
        "--type", action="append", default=[], metavar="NAME:TYPE", help="declare a type"
    )
    importing.add_argument("--quiet", action="store_true", help="no progress bar")
    importing.set_defaults(func=cmd_import)


def _pairs(values: list[str]) -> dict[str, str]:
    return {name: target for name, _, target in (v.rpartition(":") for v in values)}


def options_of(args: argparse.Namespace) -> ImportOptions:
    attestation = None
    if args.mode == "subscribe":
        missing = [
            flag
            for flag, value in (
                ("--attested-by", args.attested_by),
                ("--statement", args.statement),
                ("--collected-at", args.collected_at),
                ("--collected-where", args.collected_where),
            )
            if not value
        ]
        if missing:
            raise SystemExit(
                f"subscribe mode needs a consent attestation: {', '.join(missing)} "
                "(or --mode suppress)"
            )
        collected = dt.datetime.fromisoformat(args.collected_at)
        if collected.tzinfo is None:
            collected = collected.replace(tzinfo=dt.UTC)
        attestation = Attestation(
            attested_by=args.attested_by,
            statement=args.statement,
            statement_version=args.statement_version,
            collected_at=collected.timestamp(),
            collected_where=args.collected_where,
        )
    return ImportOptions(
        mode=args.mode,
        attestation=attestation,
        mapping=_pairs(args.map),
        types=_pairs(args.type),  # type: ignore[arg-type]
        file_name=args.file.name,
    )


def cmd_import(args: argparse.Namespace) -> int:
    from gateway.commands.context import load

    config = load(args)
    options = options_of(args)
    return asyncio.run(run_import(config, args, options))


async def run_import(config: Config, args: argparse.Namespace, options: ImportOptions) -> int:
    from gateway.server import operator_store

    settings = load_settings(config)
    engine = create_engine(settings.url, schema=settings.schema)
    spool = operator_store(config)
    await spool.open()
    try:
        await migrate(engine, schema=settings.schema)
        clock = SystemClock()
        store = AudienceStore(engine, clock)
        importer = Importer(
            store, suppressed=spool_suppressions(spool), suppress=spool_suppress(spool, clock)
        )
        list_id = await _find_list(store, args.tenant, args.list)
        if list_id is None:
            print(f"no list {args.list!r} in tenant {args.tenant!r}", file=sys.stderr)
            return EXIT_FAILED
        content_hash = await asyncio.to_thread(file_hash, args.file)
        try:
            reader = await asyncio.to_thread(
                RowReader, args.file, mapping=options.mapping, types=options.types
            )
        except ImportFormatError as e:
            print(f"{args.file}: {e}", file=sys.stderr)
            return EXIT_FAILED
        record, new = await importer.start(
            args.tenant, list_id, content_hash, reader.columns, options
        )
        if not new:
            reader.close()
            print(f"already imported as import {record.id} ({record.status})")
            _summary(record)
            return 0
        size = max(1, (await asyncio.to_thread(os.stat, args.file)).st_size)
        bar = None if args.quiet else _ProgressBar(size)
        await importer.run(
            record, reader, options, None if bar is None else lambda r: bar.show(r, reader)
        )
        if bar is not None:
            bar.done()
        print(f"import {record.id}: {record.status}")
        _summary(record)
        if record.error:
            print(record.error, file=sys.stderr)
        return 0 if record.status == "done" else EXIT_FAILED
    finally:
        await spool.close()
        await engine.dispose()


async def _find_list(store: AudienceStore, tenant: str, wanted: str) -> int | None:
    if wanted.isdigit():
        try:
            return (await store.get_list(tenant, int(wanted))).id
        except NotFound:
            return None
    after = 0
    while page := await store.list_lists(tenant, after=after, limit=500):
        for found in page:
            if found.name == wanted:
                return found.id
        after = page[-1].id
    return None


def _summary(record: ImportRecord) -> None:
    shown = {k: v for k, v in record.counts.items() if v}
    print("  " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    if any(record.counts.get(k) for k in ("skipped", "warnings")):
        print(f"  rows with a code: GET /v1/imports/{record.id}/errors.csv")


class _ProgressBar:
    def __init__(self, size: int) -> None:
        self.size = size

    def show(self, record: ImportRecord, reader: RowReader) -> None:
        share = min(1.0, reader.position() / self.size)
        filled = int(share * 30)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {share:4.0%}  "
            f"{record.counts['rows']} rows, {record.counts['skipped']} skipped"
        )
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")
