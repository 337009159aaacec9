"""The retention loop (gateway/retention.py) on a real SQLite spool: old final messages go on
their own; a failing purge is logged and tried again."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.message import DeliveryStatus
from gateway.retention import purge_forever
from gateway.store.base import DeliveryUpdate
from gateway.store.sqlite import SqliteStore
from tests.store.conftest import HOUR, T0, message, until

DAY = 24 * HOUR


async def test_the_loop_purges_old_final_messages_and_survives_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(tmp_path / "spool")
    await store.open()
    clock = FakeClock(T0)
    try:
        for n, at in ((1, T0 - 40 * DAY), (2, T0 - 10 * DAY)):
            await store.enqueue(message(n, at=at), ["a@example.org"], expires_at=at + DAY)
        claimed = await store.claim(T0, limit=10)
        await store.complete(
            [
                DeliveryUpdate(
                    delivery_id=c.delivery.id,
                    shard=c.delivery.shard,
                    status=DeliveryStatus.DELIVERED,
                )
                for c in claimed
            ],
            T0,
        )
        with caplog.at_level(logging.INFO, logger="gateway.retention"):
            loop = asyncio.create_task(purge_forever(store, clock, 30 * DAY, first=0, every=0.01))
            try:

                async def first_gone() -> bool:
                    return await store.get_message("msg-1") is None

                await until(first_gone, "the 40-day-old message to be purged")
                assert await store.get_message("msg-2") is not None, "younger than 30 days"
                clock.advance(25 * DAY)  # msg-2 is now 35 days old

                async def second_gone() -> bool:
                    return await store.get_message("msg-2") is None

                await until(second_gone, "the second message to age out")
            finally:
                loop.cancel()
                await asyncio.gather(loop, return_exceptions=True)
        assert "retention: removed 1 messages accepted over 30d ago" in caplog.text
    finally:
        await store.close()

    # A store that fails (closed here) does not end the loop: it logs and tries again.
    with caplog.at_level(logging.ERROR, logger="gateway.retention"):
        caplog.clear()
        loop = asyncio.create_task(purge_forever(store, clock, 30 * DAY, first=0, every=0.01))

        async def failed_twice() -> bool:
            return caplog.text.count("purging old messages failed") >= 2

        try:
            await until(failed_twice, "two logged failures")
            assert not loop.done()
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
