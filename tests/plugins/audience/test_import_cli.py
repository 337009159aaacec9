"""``gateway audience import FILE --list L`` as a real process, on both engines: counts,
progress on standard error, idempotent on a second run, consent attestation required."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from gateway_plugins.audience.engine import create_engine, migrate
from gateway_plugins.audience.store import AudienceStore

from gateway.clock import SystemClock
from tests.plugins.audience.csv_faults import plant
from tests.plugins.audience.databases import Database


async def make_list(db: Database, name: str) -> int:
    engine = create_engine(db.url, schema=db.schema)
    try:
        await migrate(engine, schema=db.schema)
        store = AudienceStore(engine, SystemClock())
        return (await store.create_list("default", name, opt_in="single", visibility="private")).id
    finally:
        await engine.dispose()


async def subscribed(db: Database, list_id: int) -> int:
    engine = create_engine(db.url, schema=db.schema)
    try:
        store = AudienceStore(engine, SystemClock())
        return await store.count_matching(
            "default", {"field": "list", "op": "eq", "value": list_id}
        )
    finally:
        await engine.dispose()


def gateway_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config), "audience", "import", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_imports_a_file_with_a_progress_bar(audience_db: Database, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n' + audience_db.toml())
    list_id = asyncio.run(make_list(audience_db, "Fair leads"))
    planted = plant(rows=3000, faults=100, seed=7)
    planted_file = tmp_path / "leads.csv"
    planted_file.write_bytes(planted.data)
    refused = gateway_cli(config, str(planted_file), "--list", "Fair leads")
    assert refused.returncode != 0 and "--attested-by" in refused.stderr
    attestation = [
        "--attested-by", "ops@acme.test", "--statement", "Yes please",
        "--collected-at", "2026-01-05T10:00:00", "--collected-where", "fair",
    ]  # fmt: skip
    done = gateway_cli(config, str(planted_file), "--list", "Fair leads", *attestation)
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr and "] " in done.stderr
    assert ": done" in done.stdout and f"rows {planted.rows}" in done.stdout
    # Nothing was suppressed or unsubscribed beforehand, so those rows are plain subscribers.
    expected = planted.rows - planted.skipped + planted.count("suppressed")
    assert asyncio.run(subscribed(audience_db, list_id)) == expected
    again = gateway_cli(config, str(planted_file), "--list", str(list_id), *attestation)
    assert again.returncode == 0 and "already imported" in again.stdout
    missing = gateway_cli(config, str(planted_file), "--list", "nope", *attestation)
    assert missing.returncode == 1 and "no list 'nope'" in missing.stderr
