"""Segment counts over a large audience: ``--contacts`` contacts (attributes, list
subscriptions, topic preferences) on SQLite and on PostgreSQL (127.0.0.1:5432, database
``test``, a schema of its own dropped afterwards), then the time of ``count_matching`` for a
few typical filters — each run twice, the second (warm) time printed.

    .venv/bin/python bench/audience_segment_bench.py [--contacts 1000000]
        [--engines sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway_plugins.audience import schema  # noqa: E402
from gateway_plugins.audience.engine import create_engine, migrate  # noqa: E402
from gateway_plugins.audience.store import AudienceStore  # noqa: E402

from gateway.clock import SystemClock  # noqa: E402

POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
CHUNK = 20_000


def filters(list_id: int, topic_id: int) -> dict[str, Any]:
    return {
        "attribute eq": {"field": "attributes.plan", "op": "eq", "value": "pro"},
        "number range": {"field": "attributes.seats", "op": "gte", "value": 25},
        "list member": {"field": "list", "op": "eq", "value": list_id},
        "all of four": {
            "all": [
                {"field": "list", "op": "eq", "value": list_id},
                {"field": "topic", "op": "eq", "value": topic_id},
                {"field": "attributes.plan", "op": "in", "value": ["pro", "team"]},
                {"field": "status", "op": "eq", "value": "active"},
            ]
        },
    }


async def populate(store: AudienceStore, count: int) -> tuple[int, int]:
    rng = random.Random(2101)
    news = await store.create_list("acme", "News", opt_in="single", visibility="public")
    tips = await store.create_topic("acme", "Tips", default_frequency="weekly")
    plans = ("free", "pro", "team")
    for start in range(0, count, CHUNK):
        rows = [
            {"tenant": "acme", "email": f"c{i}@example.org", "email_key": f"c{i}@example.org",
             "name": "", "locale": "en", "timezone": "", "status": "active",
             "attributes": {"plan": rng.choice(plans), "seats": rng.randrange(50)},
             "created_at": 1.7e9 + i, "updated_at": 1.7e9 + i}
            for i in range(start, min(count, start + CHUNK))
        ]  # fmt: skip
        async with store.engine.begin() as conn:
            await conn.execute(sa.insert(schema.contacts), rows)
            first = (
                await conn.execute(
                    sa.select(schema.contacts.c.id).where(
                        schema.contacts.c.email_key == rows[0]["email_key"]
                    )
                )
            ).scalar_one()
            members = [first + k for k in range(len(rows)) if rng.random() < 0.5]
            await conn.execute(
                sa.insert(schema.subscriptions),
                [{"tenant": "acme", "list_id": news.id, "contact_id": m, "status": "active",
                  "source": "import", "created_at": 0.0, "updated_at": 0.0} for m in members],
            )  # fmt: skip
            await conn.execute(
                sa.insert(schema.topic_preferences),
                [{"tenant": "acme", "topic_id": tips.id, "contact_id": m, "subscribed": True,
                  "frequency": "weekly", "updated_at": 0.0} for m in members[::2]],
            )  # fmt: skip
    async with store.engine.begin() as conn:
        await conn.execute(sa.text("ANALYZE"))  # the same statement on both engines
    return news.id, tips.id


async def bench(engine_name: str, count: int, workdir: Path) -> None:
    schema_name = f"audience_bench_{uuid.uuid4().hex[:10]}" if engine_name == "postgresql" else ""
    url = POSTGRES if schema_name else f"sqlite+aiosqlite:///{workdir / 'audience.db'}"
    engine = create_engine(url, schema=schema_name)
    try:
        await migrate(engine, schema=schema_name)
        store = AudienceStore(engine, SystemClock())
        started = time.perf_counter()
        list_id, topic_id = await populate(store, count)
        print(
            f"{engine_name:10}  {count:,} contacts loaded in {time.perf_counter() - started:.0f} s"
        )
        for name, tree in filters(list_id, topic_id).items():
            await store.count_matching("acme", tree)
            started = time.perf_counter()
            matched = await store.count_matching("acme", tree)
            took = time.perf_counter() - started
            print(f"{engine_name:10}  count {name:14} {matched:>9,} in {took:5.2f} s")
    finally:
        if schema_name:
            async with engine.begin() as conn:
                await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema_name}" CASCADE'))
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--engines", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    for engine_name in args.engines.split(","):
        with tempfile.TemporaryDirectory(prefix="segment-bench-") as tmp:
            asyncio.run(bench(engine_name, args.contacts, Path(tmp)))


if __name__ == "__main__":
    main()
