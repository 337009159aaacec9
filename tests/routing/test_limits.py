"""Per-provider limits: sends per second and per UTC day, shared through the store's counters.

A delivery over a limit moves to the next provider of its route, or waits for the limit's
window to end — it is never dropped, and the wait does not spend an attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.message import DeliveryStatus
from gateway.providers import build_provider
from gateway.routing import Router
from gateway.store.sqlite import SqliteStore
from tests.conftest import Sink, make_config
from tests.routing.support import attempts_of, delivery_of, run_once, start_gateway, submit

RECIPIENTS = [f"r{i}@example.org" for i in range(5)]


@pytest.fixture
def second_sink() -> Iterator[Sink]:
    server = Sink()
    server.start()
    yield server
    server.stop()


def test_over_the_per_second_limit_mail_moves_to_the_next_provider(
    tmp_path: Path, sink: Sink, second_sink: Sink, gateway_factory
) -> None:
    gw, _ = start_gateway(
        gateway_factory,
        tmp_path,
        primary=sink.port,
        secondary=second_sink.port,
        extra="[routing.limits.primary]\nper_second = 2\n",
    )
    submit(gw, *RECIPIENTS)
    assert run_once(gw) == 5  # all five at once, concurrently
    by_primary = [r for r in RECIPIENTS if sink.to(r)]
    by_secondary = [r for r in RECIPIENTS if second_sink.to(r)]
    assert len(by_primary) == 2 and len(by_secondary) == 3
    assert set(by_primary) | set(by_secondary) == set(RECIPIENTS)
    for rcpt in by_secondary:  # held back by the limit: no attempt at the primary
        assert [a.provider for a in attempts_of(gw, rcpt)] == ["secondary"]
    assert gw.gateway.router.provider_stats()["primary"]["limited"] == 3


def test_over_its_limits_a_single_provider_defers_until_the_window_ends(
    tmp_path: Path, sink: Sink, second_sink: Sink, gateway_factory
) -> None:
    gw, clock = start_gateway(
        gateway_factory,
        tmp_path,
        primary=sink.port,
        secondary=second_sink.port,
        extra="""
[[routes]]
name = "only-primary"
providers = ["primary"]

[routing.limits.primary]
per_second = 2
per_day = 3
""",
    )
    clock.set(86400 * 20_000 + 7.5)  # a known time of day: 00:00:07.5 UTC
    submit(gw, *RECIPIENTS)
    assert run_once(gw) == 5
    assert sum(len(sink.to(r)) for r in RECIPIENTS) == 2
    waiting = [delivery_of(gw, r) for r in RECIPIENTS if not sink.to(r)]
    assert len(waiting) == 3
    for d in waiting:
        assert d.status is DeliveryStatus.DEFERRED and d.attempts == 0
        assert d.next_attempt_at == 86400 * 20_000 + 8  # the next second
        assert "limit of 2/s reached" in d.last_error

    clock.advance(0.5)
    assert run_once(gw) == 3
    assert sum(len(sink.to(r)) for r in RECIPIENTS) == 3  # the day's third and last
    # One of the two left took this second's other slot and met the day limit; the other
    # found this second full and comes back next second, to meet the day limit then.
    waiting = [delivery_of(gw, r) for r in RECIPIENTS if not sink.to(r)]
    assert sorted(d.next_attempt_at for d in waiting) == [86400 * 20_000 + 9, 86400 * 20_001]
    clock.advance(1)
    assert run_once(gw) == 1
    waiting = [delivery_of(gw, r) for r in RECIPIENTS if not sink.to(r)]
    assert [d.next_attempt_at for d in waiting] == [86400 * 20_001] * 2  # next UTC midnight
    assert all("limit of 3/day reached" in d.last_error for d in waiting)
    assert all(d.attempts == 0 for d in waiting)

    clock.set(86400 * 20_001)
    assert run_once(gw) == 2
    assert all(len(sink.to(r)) == 1 for r in RECIPIENTS)  # each exactly once, none lost
    assert second_sink.messages == []


async def test_limits_hold_across_routers_with_their_own_store_connections(
    tmp_path: Path,
) -> None:
    """Two workers (two stores on one spool directory, as two processes have) share a limit."""
    config = make_config(tmp_path, "[routing.limits.capture]\nper_second = 7\nper_day = 100\n")
    clock = FakeClock()
    stores = [
        SqliteStore(tmp_path / "spool", write_shard=0, shards=[0]),
        SqliteStore(tmp_path / "spool", write_shard=1, shards=[1]),
    ]
    for store in stores:
        await store.open()
    try:
        routers = [
            Router(
                config,
                {"capture": build_provider("capture", config.providers["capture"], config)},
                store=store,
                clock=clock,
            )
            for store in stores
        ]
        outcomes = await asyncio.gather(*(routers[i % 2].reserve("capture") for i in range(40)))
        assert sum(o is None for o in outcomes) == 7
        clock.advance(1)
        outcomes = await asyncio.gather(*(routers[i % 2].reserve("capture") for i in range(40)))
        assert sum(o is None for o in outcomes) == 7
    finally:
        for store in stores:
            await store.close()


async def test_per_minute_and_per_hour_limits_hold_and_name_their_window(tmp_path: Path) -> None:
    """The windows the ``rate_limit`` plugin's ``providers`` table had, now here (finding 12)."""
    config = make_config(
        tmp_path, "[routing.limits.capture]\nper_second = 5\nper_minute = 8\nper_hour = 10\n"
    )
    clock = FakeClock(1_800_000_000.0)  # a whole hour
    store = SqliteStore(tmp_path / "spool", write_shard=0, shards=[0])
    await store.open()
    try:
        router = Router(
            config,
            {"capture": build_provider("capture", config.providers["capture"], config)},
            store=store,
            clock=clock,
        )
        outcomes = [await router.reserve("capture") for _ in range(6)]
        assert sum(o is None for o in outcomes) == 5
        clock.advance(1)
        outcomes = [await router.reserve("capture") for _ in range(6)]
        assert sum(o is None for o in outcomes) == 3  # the minute's 8
        held = [o for o in outcomes if o is not None]
        assert held[0].until == 1_800_000_060.0
        assert "limit of 8/min reached" in held[0].reason
        clock.advance(60)
        outcomes = [await router.reserve("capture") for _ in range(6)]
        assert sum(o is None for o in outcomes) == 2  # the hour's 10
        held = [o for o in outcomes if o is not None]
        assert held[0].until == 1_800_003_600.0
        assert "limit of 10/h reached" in held[0].reason
    finally:
        await store.close()
