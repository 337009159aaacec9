"""Automatic pipelining (gateway/store/redis_pipeline.py) against a real redis-server: one turn's
commands share one connection and round trip, yet each caller gets its own reply or error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, ResponseError

from gateway.store.base import StoreError
from gateway.store.redis import RedisStore
from gateway.store.redis_pipeline import AutoPipeline, NotReplicated
from tests.redisserver import RedisServer, free_port
from tests.store.conftest import HOUR, T0, message

ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Any]:
    connection = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    yield connection
    await connection.aclose()


async def connections_received(client: Any) -> int:
    return int((await client.info("stats"))["total_connections_received"])


async def test_concurrent_commands_share_one_pooled_connection(
    client: Any, redis_prefix: str
) -> None:
    key = f"{{{redis_prefix}}}:h"
    await client.hset(key, mapping={f"f{i}": str(i) for i in range(50)})
    pipe = AutoPipeline(client, {})

    before = await connections_received(client)
    values = await asyncio.gather(*(pipe.execute("HGET", key, f"f{i}") for i in range(50)))
    assert values == [str(i).encode() for i in range(50)]
    assert await connections_received(client) == before  # the one pooled connection did it all

    # The same 50 calls made directly each take a connection of their own.
    before = await connections_received(client)
    await asyncio.gather(*(client.hget(key, f"f{i}") for i in range(50)))
    assert await connections_received(client) - before > 10


async def test_a_failing_command_fails_only_its_caller(client: Any, redis_prefix: str) -> None:
    text, table = f"{{{redis_prefix}}}:text", f"{{{redis_prefix}}}:table"
    await client.set(text, "plain")
    await client.hset(table, "f", "v")
    pipe = AutoPipeline(client, {})

    results = await asyncio.gather(
        pipe.execute("HGET", table, "f"),
        pipe.execute("HGET", text, "f"),  # WRONGTYPE
        pipe.execute("GET", text),
        return_exceptions=True,
    )
    assert results[0] == b"v" and results[2] == b"plain"
    assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])


async def test_commands_of_one_turn_apply_in_the_order_issued(
    client: Any, redis_prefix: str
) -> None:
    key = f"{{{redis_prefix}}}:k"
    pipe = AutoPipeline(client, {})
    await asyncio.gather(*(pipe.execute("RPUSH", key, str(i)) for i in range(20)))
    assert await client.lrange(key, 0, -1) == [str(i).encode() for i in range(20)]


async def test_a_script_unknown_to_the_server_is_loaded_and_run(
    client: Any, redis_prefix: str
) -> None:
    key = f"{{{redis_prefix}}}:s"
    pipe = AutoPipeline(client, {"ECHO": ECHO})
    await client.script_flush()  # as after a restart or a failover to a fresh replica
    results = await asyncio.gather(*(pipe.script("ECHO", [key], [str(i)]) for i in range(5)))
    assert results == [[key.encode(), str(i).encode()] for i in range(5)]
    assert await pipe.script("ECHO", [key], ["again"]) == [key.encode(), b"again"]


async def test_a_cancelled_caller_leaves_the_others_their_replies(
    client: Any, redis_prefix: str
) -> None:
    key = f"{{{redis_prefix}}}:c"
    await client.set(key, "1")
    pipe = AutoPipeline(client, {})
    doomed = asyncio.ensure_future(pipe.execute("GET", key))
    others = [asyncio.ensure_future(pipe.execute("INCR", key)) for _ in range(3)]
    await asyncio.sleep(0)  # every command is queued for this turn's batch
    doomed.cancel()
    assert sorted(await asyncio.gather(*others)) == [2, 3, 4]
    assert doomed.cancelled()
    await pipe.drain()


async def test_when_redis_is_unreachable_every_caller_gets_the_error() -> None:
    unreachable = aioredis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    pipe = AutoPipeline(unreachable, {})
    try:
        results = await asyncio.gather(
            *(pipe.execute("GET", f"k{i}") for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, ConnectionError) for r in results), results
        with pytest.raises(ConnectionError):
            await pipe.execute("GET", "alone")  # the unbatched path fails the same way
    finally:
        await unreachable.aclose()


async def test_a_replicated_write_fails_when_no_replica_confirms_it(
    client: Any, redis_prefix: str
) -> None:
    """The session's redis-server has no replica: WAIT confirms 0 of 1."""
    key, other = f"{{{redis_prefix}}}:r", f"{{{redis_prefix}}}:o"
    pipe = AutoPipeline(client, {}, min_replicas=1, replica_timeout=0.05)
    results = await asyncio.gather(
        pipe.execute("SET", key, "v", replicated=True),
        pipe.execute("SET", other, "w"),  # not asked to be replicated: fine
        return_exceptions=True,
    )
    assert isinstance(results[0], NotReplicated), results
    assert "written to the master, but 0 of 1 replicas confirmed it within 50 ms" in str(results[0])
    assert results[1] is True
    assert await client.get(key) == b"v", "the master has it: a retry may duplicate it"
    with pytest.raises(NotReplicated):
        await pipe.execute("SET", key, "alone", replicated=True)  # a batch of one waits too

    unreplicated = AutoPipeline(client, {}, min_replicas=0)
    assert await unreplicated.execute("SET", key, "v2", replicated=True) is True


async def test_the_store_refuses_a_message_no_replica_confirmed(
    redis_server: RedisServer, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(redis_server.url, prefix=redis_prefix, min_replicas=1, replica_timeout=0.05)
    with caplog.at_level(logging.WARNING, logger="gateway.store.redis"):
        await store.open()
    assert "min_replicas is 1 but the master has 0 replicas connected" in caplog.text
    try:
        with pytest.raises(StoreError, match="0 of 1 replicas confirmed it"):
            await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
    finally:
        await store.close()
