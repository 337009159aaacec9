"""What only the Redis store does: leases and their heartbeat, hand-back on a clean stop, the
persistence check at start, the URL forms, and errors when Redis is not there."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.clock import FakeClock
from gateway.config import ConfigError, parse_config
from gateway.message import Attempt, DeliveryStatus
from gateway.server import open_store, operator_store
from gateway.store.base import DeliveryFilter, DeliveryUpdate, StoreError
from gateway.store.redis import RedisStore
from gateway.store.redis_client import parse_redis_url
from gateway.store.sqlite import SqliteStore
from tests.redisserver import RedisServer, free_port
from tests.store.conftest import HOUR, T0, message


@pytest.fixture
async def open_redis(
    redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[Callable[..., object]]:
    opened: list[RedisStore] = []

    async def make(**kwargs: object) -> RedisStore:
        store = RedisStore(redis_server.url, prefix=redis_prefix, **kwargs)  # type: ignore[arg-type]
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


# --- leases ------------------------------------------------------------------------------------


async def test_a_heartbeat_keeps_a_long_send_from_being_taken_over(
    open_redis,  # type: ignore[no-untyped-def]
    redis_server: RedisServer,
    redis_prefix: str,
) -> None:
    clock = FakeClock(T0)
    sender = await open_redis(lease_seconds=3, clock=clock)
    other = await open_redis(lease_seconds=3, clock=FakeClock(T0))
    await sender.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
    (claimed,) = await sender.claim(T0, limit=1)
    leases = f"{{{redis_prefix}}}:leases"

    async def lease_deadline() -> float:
        with redis_server.client() as client:
            return float(client.zscore(leases, claimed.delivery.id) or 0)

    # The send goes on well past one lease; the heartbeat (every 1 s) moves the lease along
    # with the sender's clock, so it never falls behind the other node's clock.
    for _ in range(3):
        clock.advance(2)
        deadline = asyncio.get_running_loop().time() + 10
        while await lease_deadline() < clock.now() + 3:
            assert asyncio.get_running_loop().time() < deadline, "the lease was not renewed"
            await asyncio.sleep(0.05)
    assert await other.claim(clock.now(), limit=10) == [], "the sender is alive: no take-over"
    (d,) = await other.list_deliveries(DeliveryFilter())
    assert d.status is DeliveryStatus.SENDING


async def test_an_expired_lease_is_taken_over_by_the_next_claim(open_redis) -> None:  # type: ignore[no-untyped-def]
    dead = await open_redis(lease_seconds=30)
    alive = await open_redis(lease_seconds=30)
    await dead.enqueue(message(1), ["a@example.org", "b@example.org"], expires_at=T0 + HOUR)
    assert len(await dead.claim(T0, limit=10)) == 2
    await dead.close(release=False)  # killed: no heartbeat, nothing handed back
    assert await alive.claim(T0 + 30, limit=10) == [], "the lease runs to T0 + 30"
    taken = await alive.claim(T0 + 31, limit=10)
    assert sorted(c.delivery.recipient for c in taken) == ["a@example.org", "b@example.org"]
    assert all("lease" in c.delivery.last_error for c in taken)
    assert all(c.delivery.status is DeliveryStatus.SENDING for c in taken)
    assert all(c.message.id == "msg-1" for c in taken)


async def test_a_late_outcome_never_overwrites_the_node_that_took_the_delivery_over(
    open_redis,  # type: ignore[no-untyped-def]
) -> None:
    """A node whose outcome write kept failing past its lease (Redis away) finally writes it
    after another node took the delivery over: the delivery is the other node's now."""
    slow = await open_redis(lease_seconds=30)
    other = await open_redis(lease_seconds=30)
    await slow.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
    (mine,) = await slow.claim(T0, limit=1)
    (taken,) = await other.claim(T0 + 31, limit=1)
    assert taken.delivery.id == mine.delivery.id
    late = DeliveryUpdate(
        delivery_id=mine.delivery.id,
        shard=0,
        status=DeliveryStatus.DELIVERED,
        attempts=[Attempt(at=T0 + 40, provider="relay", outcome="sent", detail="250 late")],
    )
    await slow.complete([late], T0 + 40)
    (d,) = await other.list_deliveries(DeliveryFilter())
    assert d.status is DeliveryStatus.SENDING, "still the other node's to record"
    assert await other.attempts(d) == []
    done = DeliveryUpdate(
        delivery_id=taken.delivery.id,
        shard=0,
        status=DeliveryStatus.DELIVERED,
        attempts=[Attempt(at=T0 + 41, provider="relay", outcome="sent", detail="250 ok")],
    )
    await other.complete([done], T0 + 41)
    (d,) = await other.list_deliveries(DeliveryFilter())
    assert d.status is DeliveryStatus.DELIVERED and d.attempts == 1
    assert [a.detail for a in await other.attempts(d)] == ["250 ok"]


async def test_a_clean_stop_hands_deliveries_in_flight_back_at_once(open_redis) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock(T0)
    stopping = await open_redis(lease_seconds=30, clock=clock)
    other = await open_redis(lease_seconds=30)
    await stopping.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
    await stopping.claim(T0, limit=10)
    clock.advance(1)
    await stopping.close()
    (taken,) = await other.claim(T0 + 1, limit=10)
    assert taken.delivery.recipient == "a@example.org"
    assert "stopped" in taken.delivery.last_error


async def test_recover_leaves_live_nodes_deliveries_alone(open_redis) -> None:  # type: ignore[no-untyped-def]
    sending = await open_redis(lease_seconds=30)
    starting = await open_redis(lease_seconds=30)
    await sending.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
    await sending.claim(T0, limit=1)
    assert await starting.recover(T0 + 5) == 0, "a node starting up must not steal live work"
    assert (await starting.counts())[DeliveryStatus.SENDING] == 1


# --- persistence check -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("appendonly", "appendfsync", "warning"),
    [
        ("no", "everysec", "appendonly is off"),
        ("yes", "everysec", "loses the last ~1 s"),
        ("yes", "no", "appendfsync no"),
        ("yes", "always", None),
    ],
)
async def test_open_warns_about_what_the_servers_persistence_can_lose(
    open_redis,  # type: ignore[no-untyped-def]
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    appendonly: str,
    appendfsync: str,
    warning: str | None,
) -> None:
    with redis_server.client() as client:
        client.config_set("appendfsync", appendfsync)
        client.config_set("appendonly", appendonly)
    try:
        with caplog.at_level(logging.INFO, logger="gateway.store.redis"):
            store = await open_redis(allow_volatile=appendonly == "no")
    finally:
        with redis_server.client() as client:
            client.config_set("appendonly", "yes")
            client.config_set("appendfsync", "always")
    assert store.persistence is not None
    assert store.persistence.appendonly is (appendonly == "yes")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warning is None:
        assert warnings == []
        assert any("no acknowledged loss" in r.getMessage() for r in caplog.records)
    else:
        (text,) = warnings
        assert warning in text and "docs/redis.md" in text


# --- connecting --------------------------------------------------------------------------------


async def test_an_unreachable_server_is_a_store_error_naming_it() -> None:
    port = free_port()
    store = RedisStore(f"redis://:secret@127.0.0.1:{port}/0")
    with pytest.raises(
        StoreError, match=rf"cannot reach Redis at redis://:\*\*\*@127.0.0.1:{port}"
    ):
        await store.open()
    await store.close()


async def test_a_store_that_is_not_open_refuses_work() -> None:
    with pytest.raises(StoreError, match="not open"):
        await RedisStore("redis://127.0.0.1:1/0").counts()


def test_url_forms() -> None:
    single = parse_redis_url("rediss://app:p%40ss@redis.internal:6380/3")
    assert (single.topology, single.tls, single.db, single.username, single.password) == (
        "single",
        True,
        3,
        "app",
        "p@ss",
    )
    assert single.redacted == "rediss://app:***@redis.internal:6380/3"
    sentinel = parse_redis_url(
        "redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2?sentinel_password=sp"
    )
    assert (sentinel.topology, sentinel.nodes, sentinel.service, sentinel.db) == (
        "sentinel",
        (("s1", 26379), ("s2", 26380)),
        "mymaster",
        2,
    )
    assert (sentinel.password, sentinel.sentinel_password) == ("pw", "sp")
    cluster = parse_redis_url("rediss+cluster://c1:7000,[::1]:7001")
    assert (cluster.topology, cluster.tls, cluster.nodes) == (
        "cluster",
        True,
        (("c1", 7000), ("::1", 7001)),
    )
    assert parse_redis_url("unix:///run/redis.sock?db=4").db == 4
    assert parse_redis_url("redis://localhost").redacted == "redis://localhost"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://redis:6379", "unsupported scheme http://"),
        ("127.0.0.1:6379", "unsupported scheme"),
        ("redis://", "no host"),
        ("redis://redis:port/0", "bad port"),
        ("redis://redis:6379/zero", "database must be a number"),
        ("redis+sentinel://s1:26379", "name the master"),
        ("redis+sentinel://s1/mymaster", "each host needs a port"),
        ("redis+cluster://c1:7000/1", "a cluster has only database 0"),
        ("redis+cluster://c1:99999", "bad port"),
        ("unix://", "no socket path"),
    ],
)
def test_bad_urls_are_config_errors_naming_the_key(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=r"store\.url") as raised:
        parse_config(f'[store]\nbackend = "redis"\nurl = "{url}"\n', source="t.toml")
    assert why in str(raised.value)


def test_allow_volatile_is_a_store_setting() -> None:
    config = parse_config('[store]\nbackend = "redis"\nallow_volatile = true\n', source="t.toml")
    assert config.store.allow_volatile is True
    assert parse_config("", source="t.toml").store.allow_volatile is False


@pytest.mark.parametrize(
    ("toml", "why"),
    [
        ('backend = "redis"\nprefix = ""', r"store\.prefix.*non-empty"),
        ('backend = "redis"\nprefix = "a{b}"', r"store\.prefix.*braces"),
        ('backend = "redis"\nlease = "soon"', r"store\.lease.*not a duration"),
        ('backend = "redis"\nlease = "1s"', r"store\.lease.*at least 3s"),
        ('backend = "memcached"', r"store\.backend"),
        ('retention = "12h"', r"store\.retention.*at least 1d"),
        ('backend = "redis"\nmin_replicas = -1', r"store\.min_replicas.*0 or more"),
        (
            'backend = "redis"\nurl = "redis+cluster://c1:7000"\nmin_replicas = 1',
            r"store\.min_replicas.*not supported with Redis Cluster",
        ),
        ('backend = "redis"\nreplica_timeout = "0s"', r"store\.replica_timeout.*above 0s"),
        ('retention = "never"', r"store\.retention.*not a duration.*or 'forever'"),
    ],
)
def test_bad_store_settings_are_config_errors(toml: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_config(f"[store]\n{toml}\n", source="t.toml")


def test_the_configured_backend_is_the_one_opened(tmp_path) -> None:  # type: ignore[no-untyped-def]
    redis_config = parse_config(
        '[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:6390/2"\n'
        'prefix = "eu"\nlease = "45s"\nmin_replicas = 1\nreplica_timeout = "0.25s"\n'
    )
    store = open_store(redis_config, worker=1, workers=2)
    assert isinstance(store, RedisStore)
    assert (store.target.db, store.prefix, store.lease_seconds) == (2, "eu", 45.0)
    assert (store.min_replicas, store.replica_timeout) == (1, 0.25)
    assert isinstance(operator_store(redis_config), RedisStore)
    sqlite_config = parse_config(f'[gateway]\ndata_dir = "{tmp_path}"\n')
    assert isinstance(open_store(sqlite_config), SqliteStore), "SQLite stays the default"
    assert sqlite_config.store.retention_seconds == 30 * 86400, "30 days unless told"
    kept = parse_config('[store]\nretention = "forever"\n').store
    assert kept.retention_seconds is None
