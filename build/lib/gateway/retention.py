"""Retention: a message whose every delivery is final (delivered, bounced, expired, skipped) is
removed once it is older than ``store.retention``, so the spool — or Redis's memory — does not
grow for ever. Messages with a delivery still waiting are never touched, however old.

Every worker of every node runs the loop; the store's ``purge`` is safe to run concurrently
(SQLite: each worker purges the shards it writes; Redis: one Lua script per batch).
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.clock import Clock
from gateway.durations import format_duration
from gateway.store.base import Store, StoreError

log = logging.getLogger("gateway.retention")

FIRST_PURGE_AFTER = 300.0
"""Seconds after start-up before the first purge, to keep it out of a restart's busy minute."""
PURGE_EVERY = 3600.0


async def purge_old_messages(store: Store, clock: Clock, retention: float) -> int:
    """Remove the final messages accepted more than ``retention`` seconds ago; how many."""
    started = time.monotonic()
    purged = await store.purge(clock.now() - retention)
    if purged:
        log.info(
            "retention: removed %d messages accepted over %s ago in %.1fs",
            purged,
            format_duration(retention),
            time.monotonic() - started,
        )
    return purged


async def purge_forever(
    store: Store,
    clock: Clock,
    retention: float,
    *,
    first: float = FIRST_PURGE_AFTER,
    every: float = PURGE_EVERY,
) -> None:
    """``purge_old_messages`` after ``first`` seconds, then every ``every`` seconds."""
    await asyncio.sleep(first)
    while True:
        try:
            await purge_old_messages(store, clock, retention)
        except StoreError:
            log.exception("retention: purging old messages failed; trying again in %.0fs", every)
        await asyncio.sleep(every)
