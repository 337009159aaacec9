"""The Redis store against real Sentinel and Cluster setups on loopback (``tests/redistopology``):
the ``redis+sentinel://`` and ``redis+cluster://`` URLs, a Sentinel failover under an open
store, and the ``{prefix}`` hash tag that keeps every key — and so every script — in one slot.
The whole store contract suite also runs against both (``backend`` in ``conftest.py``)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from gateway.message import DeliveryStatus
from gateway.store.base import DeliveryUpdate, StoreError, Suppression
from gateway.store.redis import RedisStore
from gateway.store.redis_client import Persistence
from tests.redistopology import ClusterSetup, SentinelSetup, sentinel_setup
from tests.store.conftest import HOUR, LEASE, T0, message, until

T = TypeVar("T")


@pytest.fixture
async def open_store() -> AsyncIterator[Callable[[str], Awaitable[RedisStore]]]:
    """Opens ``RedisStore``s on a URL, each under a fresh prefix; closes them at the end."""
    opened: list[RedisStore] = []

    async def make(url: str) -> RedisStore:
        store = RedisStore(url, prefix=f"topo-{uuid.uuid4().hex[:8]}", lease_seconds=LEASE)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


async def eventually(call: Callable[[], Awaitable[T]], within: float, what: str) -> T:
    """``call()``'s result once it stops raising ``StoreError`` (a failover in progress);
    fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except StoreError:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within}s waiting for {what}") from None
            await asyncio.sleep(0.1)


async def round_trip(store: RedisStore) -> None:
    """Enqueue, claim, deliver, count; suppressions; counters and sightings."""
    (delivery,) = await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
    (claimed,) = await store.claim(T0, limit=10)
    assert claimed.delivery.id == delivery.id
    assert claimed.message.raw == message(1).raw
    await store.complete(
        [DeliveryUpdate(delivery_id=delivery.id, shard=0, status=DeliveryStatus.DELIVERED)],
        T0 + 1,
    )
    counts = await store.counts()
    assert counts[DeliveryStatus.DELIVERED] == 1
    assert sum(counts.values()) == 1
    assert await store.claim(T0 + 2, limit=10) == []

    entry = Suppression(
        tenant="default", address="Bounced@Example.org", reason="bounce", created_at=T0
    )
    assert await store.add_suppressions([entry]) == 1
    found = await store.find_suppression("default", "bounced@example.org")
    assert found is not None and found.reason == "bounce"
    assert set(await store.suppressed("default", ["bounced@example.org", "b@example.org"])) == {
        "bounced@example.org"
    }
    assert await store.remove_suppression("default", "bounced@example.org")
    assert await store.find_suppression("default", "bounced@example.org") is None

    assert await store.consume("rate", 2, 3, expires_at=T0 + 60, now=T0)
    assert not await store.consume("rate", 2, 3, expires_at=T0 + 60, now=T0)
    assert await store.add_to_counter("warm", 5, expires_at=T0 + 60, now=T0) == 5
    assert await store.add_to_counter("warm", 2, expires_at=T0 + 60, now=T0) == 7
    assert await store.counters(["rate", "warm", "none"], T0) == {"rate": 2, "warm": 7, "none": 0}
    assert await store.first_sighting("event-1", expires_at=T0 + 60, now=T0)
    assert not await store.first_sighting("event-1", expires_at=T0 + 60, now=T0)


# --- Sentinel ----------------------------------------------------------------------------------


async def test_a_store_through_sentinel_round_trips(
    redis_sentinel: SentinelSetup, open_store: Callable[[str], Awaitable[RedisStore]]
) -> None:
    store = await open_store(redis_sentinel.url)
    await round_trip(store)
    # The persistence check reached the master Sentinel names, not the sentinel itself.
    assert store.persistence == Persistence(appendonly=True, appendfsync="always")
    with redis_sentinel.master().client() as client:
        assert client.exists(f"{{{store.prefix}}}:seq")


async def test_a_store_follows_a_sentinel_failover_and_keeps_its_data(tmp_path: Path) -> None:
    with sentinel_setup(tmp_path) as setup:
        store = RedisStore(setup.url, prefix="failover", lease_seconds=LEASE)
        await store.open()
        try:
            old = setup.master()
            before = await store.enqueue(
                message(1), ["a@example.org", "b@example.org"], expires_at=T0 + HOUR
            )
            with old.client() as client:  # replication is asynchronous: let the replica catch up
                assert client.execute_command("WAIT", 1, 5000) == 1

            new = setup.failover()
            assert new.port != old.port

            # The same store object, with the same client, writes to the promoted master: its
            # pooled connection to the old one fails (READONLY) once, then it asks Sentinel.
            after = await eventually(
                lambda: store.enqueue(message(2), ["c@example.org"], expires_at=T0 + HOUR),
                30,
                "the store to reach the new master",
            )
            assert after[0].id > max(d.id for d in before)
            claimed = await eventually(
                lambda: store.claim(T0, limit=10), 30, "a claim on the new master"
            )
            assert {c.delivery.recipient for c in claimed} == {
                "a@example.org",
                "b@example.org",
                "c@example.org",
            }
            with new.client() as client:
                assert client.exists("{failover}:m:msg-1", "{failover}:m:msg-2") == 2
        finally:
            await store.close()


async def test_a_store_follows_sentinel_when_the_master_is_killed(tmp_path: Path) -> None:
    with sentinel_setup(tmp_path) as setup:
        store = RedisStore(setup.url, prefix="killed", lease_seconds=LEASE)
        await store.open()
        try:
            old = setup.master()
            await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
            with old.client() as client:
                assert client.execute_command("WAIT", 1, 5000) == 1

            os.kill(old.process.pid, signal.SIGKILL)
            old.process.wait(10)

            # Sentinel sees the master down after 1 s and promotes the replica; meanwhile the
            # store answers StoreError, then reaches the new master by itself.
            (claimed,) = await eventually(
                lambda: store.claim(T0, limit=10), 60, "the store to reach the promoted replica"
            )
            assert claimed.message.raw == message(1).raw
            assert setup.master().port != old.port
            await store.complete(
                [
                    DeliveryUpdate(
                        delivery_id=claimed.delivery.id, shard=0, status=DeliveryStatus.DELIVERED
                    )
                ],
                T0 + 1,
            )
            assert (await store.counts())[DeliveryStatus.DELIVERED] == 1
        finally:
            await store.close()


# --- Cluster -----------------------------------------------------------------------------------


async def test_a_store_through_cluster_round_trips(
    redis_cluster: ClusterSetup, open_store: Callable[[str], Awaitable[RedisStore]]
) -> None:
    store = await open_store(redis_cluster.url)
    await round_trip(store)
    assert store.persistence == Persistence(appendonly=True, appendfsync="always")
    assert await store.purge_idempotency(T0) == 0  # SCAN over every node


async def test_every_key_of_a_store_lives_on_one_cluster_node(
    redis_cluster: ClusterSetup, open_store: Callable[[str], Awaitable[RedisStore]]
) -> None:
    store = await open_store(redis_cluster.url)
    await round_trip(store)
    pattern = f"{{{store.prefix}}}:*"
    holding = []
    for server in redis_cluster.servers:
        with server.client() as client:
            keys = list(client.scan_iter(match=pattern))
        if keys:
            holding.append((server.port, keys))
    assert len(holding) == 1, holding
    assert len(holding[0][1]) > 5


async def test_the_cluster_persistence_check_reports_the_weakest_node(
    redis_cluster: ClusterSetup, open_store: Callable[[str], Awaitable[RedisStore]]
) -> None:
    weak = redis_cluster.servers[2]
    with weak.client() as client:
        client.config_set("appendfsync", "everysec")
    try:
        store = await open_store(redis_cluster.url)
        assert store.persistence == Persistence(appendonly=True, appendfsync="everysec")
    finally:
        with weak.client() as client:
            client.config_set("appendfsync", "always")


async def test_with_min_replicas_a_planned_failover_loses_no_accepted_message(
    tmp_path: Path,
) -> None:
    """Messages are enqueued without pause while Sentinel fails over. Without
    ``min_replicas`` the old master keeps taking writes for seconds after the promotion and
    drops them when it resyncs (923 of 1,402 accepted messages, measured with this test and
    ``min_replicas=0``); with it, a write the promoted replica never got is refused, so every
    message the store accepted is on the new master."""
    with sentinel_setup(tmp_path) as setup:
        store = RedisStore(
            setup.url, prefix="nolost", lease_seconds=LEASE, min_replicas=1, replica_timeout=0.5
        )
        await store.open()
        accepted: list[str] = []
        refused = 0
        done = asyncio.Event()

        async def keep_sending() -> None:
            nonlocal refused
            n = 0
            while not done.is_set():
                n += 1
                try:
                    await store.enqueue(message(n), ["a@example.org"], expires_at=T0 + HOUR)
                except StoreError:
                    refused += 1
                    await asyncio.sleep(0.05)
                else:
                    accepted.append(f"msg-{n}")
                await asyncio.sleep(0.01)

        sender = asyncio.create_task(keep_sending())
        try:
            old = setup.master()
            await until(lambda: len(accepted) >= 20, "sends before the failover", 10)
            new = await asyncio.to_thread(setup.failover)
            assert new.port != old.port
            count = len(accepted)
            await until(lambda: len(accepted) >= count + 20, "sends afterwards", 30)
        finally:
            done.set()
            await sender
            await store.close()
        with new.client() as client:
            pipe = client.pipeline(transaction=False)
            for mid in accepted:
                pipe.exists(f"{{nolost}}:m:{mid}")
            found = pipe.execute()
        missing = [mid for mid, there in zip(accepted, found, strict=True) if not there]
        assert not missing, (
            f"{len(missing)} of {len(accepted)} accepted messages lost"
            f" ({refused} refused during the failover): {missing[:10]}"
        )
