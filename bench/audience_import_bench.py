"""The audience CSV import: a file of ``--rows`` rows with ``--faults`` planted faults (bad
syntax, missing addresses, duplicates, short rows, over-long fields, bad time zones,
suppressed and unsubscribed addresses, role addresses; UTF-8 with a BOM, ``;`` delimiters,
quoted fields with ``;``, ``,``, quotes and newlines, IDN domains), imported by
``gateway audience import`` as its own process, on SQLite and on PostgreSQL (127.0.0.1:5432,
database ``test``, a schema of its own dropped afterwards). Prints wall time and the import
process's peak RSS, and checks the counts and the per-row codes against what was planted.

    .venv/bin/python bench/audience_import_bench.py [--rows 100000] [--faults 1000]
        [--engines sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway_plugins.audience.engine import create_engine, migrate  # noqa: E402
from gateway_plugins.audience.imports import Importer  # noqa: E402
from gateway_plugins.audience.model import ConsentEvidence  # noqa: E402
from gateway_plugins.audience.store import AudienceStore  # noqa: E402

from gateway.clock import SystemClock  # noqa: E402
from tests.plugins.audience.csv_faults import CODES, Planted, plant  # noqa: E402

POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
ATTESTATION = [
    "--attested-by", "bench@acme.test", "--statement", "Yes, the newsletter",
    "--collected-at", "2026-01-05T10:00:00", "--collected-where", "bench",
]  # fmt: skip


async def prepare(url: str, schema: str, planted: Planted) -> int:
    """The list, and the addresses that must be unsubscribed from it beforehand."""
    engine = create_engine(url, schema=schema)
    try:
        await migrate(engine, schema=schema)
        store = AudienceStore(engine, SystemClock())
        news = await store.create_list("default", "News", opt_in="single", visibility="private")
        for email in planted.unsubscribe:
            contact, _ = await store.upsert_contact("default", email)
            evidence = ConsentEvidence(method="api")
            await store.subscribe(
                "default", news.id, contact.id, status="active", evidence=evidence
            )
            await store.unsubscribe("default", news.id, contact.id, evidence=evidence)
        return news.id
    finally:
        await engine.dispose()


async def outcome(url: str, schema: str) -> tuple[dict[str, int], dict[int, str]]:
    """The counts and {row: code} of the newest subscribe import."""
    engine = create_engine(url, schema=schema)
    try:
        store = AudienceStore(engine, SystemClock())

        async def nothing(*_: object) -> set[str]:
            return set()

        importer = Importer(store, suppressed=nothing, suppress=nothing)  # type: ignore[arg-type]
        async with engine.connect() as conn:
            newest = await conn.scalar(sa.text("SELECT max(id) FROM audience_imports"))
        record = await importer.get("default", int(newest))
        assert record is not None
        codes: dict[int, str] = {}
        after = (0, "")
        while page := await importer.errors(record.id, after=after):
            codes.update({row: code for row, code, _, _ in page})
            after = (page[-1][0], page[-1][1])
        return record.counts, codes
    finally:
        await engine.dispose()


async def drop(schema: str) -> None:
    engine = create_engine(POSTGRES)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


def run_timed(command: list[str]) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS in MB, stdout) of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read().decode(), process.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{out}\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out


def bench(engine: str, rows: int, faults: int, workdir: Path) -> None:
    planted = plant(rows, faults)
    data = workdir / engine / "data"
    data.mkdir(parents=True)
    csv_file = workdir / engine / "import.csv"
    csv_file.write_bytes(planted.data)
    schema = f"audience_bench_{uuid.uuid4().hex[:10]}" if engine == "postgresql" else ""
    url = POSTGRES if schema else f"sqlite+aiosqlite:///{data / 'audience.db'}"
    config = workdir / engine / "gateway.toml"
    table = f'[plugins.audience]\nurl = "{url}"\n' + (f'schema = "{schema}"\n' if schema else "")
    config.write_text(f'[gateway]\ndata_dir = "{data}"\n' + table)
    try:
        list_id = asyncio.run(prepare(url, schema, planted))
        suppress_file = workdir / engine / "suppress.csv"
        suppress_file.write_text("email\n" + "\n".join(planted.suppress) + "\n")
        cli = [sys.executable, "-m", "gateway", "-c", str(config), "audience", "import"]
        run_timed([*cli, str(suppress_file), "--list", str(list_id), "--mode", "suppress"])
        command = [*cli, str(csv_file), "--list", str(list_id), "--quiet", *ATTESTATION]
        wall, cpu, rss, _ = run_timed(command)
        counts, codes = asyncio.run(outcome(url, schema))
    finally:
        if schema:
            asyncio.run(drop(schema))
    exact = (
        counts["rows"] == planted.rows
        and all(counts[code] == planted.count(code) for code in CODES)
        and counts["subscribed"] == planted.subscribed
        and codes == planted.expected
    )
    size = csv_file.stat().st_size / 1e6
    print(
        f"{engine:10}  {rows:>9,} rows ({size:.1f} MB), {faults:,} faults: {wall:6.2f} s "
        f"({rows / wall:,.0f} rows/s, {cpu:.1f} s CPU), peak RSS {rss:5.0f} MB, "
        f"counts and errors {'exact' if exact else 'WRONG'}"
    )
    if not exact:
        print(f"  counts {counts}", file=sys.stderr)
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--faults", type=int, default=1_000)
    parser.add_argument("--engines", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    print(f"  (the import is `gateway audience import` as its own process; {os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="audience-bench-") as tmp:
        for engine in args.engines.split(","):
            bench(engine, args.rows, args.faults, Path(tmp))


if __name__ == "__main__":
    main()
