"""One store suite for every engine: each contract test runs against SQLite, a real Redis
(``tests/redisserver.py``), and Redis through Sentinel and Cluster (``tests/redistopology.py``).
``backend`` opens stores that share one spool (SQLite: one directory; Redis: one server and key
prefix), as several processes or nodes would."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gateway.message import Message
from gateway.store.base import Store
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SqliteStore, existing_shards, shard_path
from tests.redisserver import RedisServer
from tests.redistopology import ClusterSetup, SentinelSetup

T0 = 1_800_000_000.0
HOUR = 3600.0
LEASE = 60.0
"""Redis stores here hold a claimed delivery this long; SQLite has no lease."""


def message(
    n: int | str,
    *,
    at: float = T0,
    mail_from: str = "app@example.com",
    tenant: str = "default",
) -> Message:
    return Message(
        id=f"msg-{n}",
        tenant=tenant,
        mail_from=mail_from,
        raw=f"From: <{mail_from}>\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode(),
        created_at=at,
    )


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, within: float = 10.0
) -> None:
    """Poll ``predicate`` (plain or async) from a test's event loop until it holds; fail after
    ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if await result if inspect.isawaitable(result) else result:
            return
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        await asyncio.sleep(0.01)


class Backend:
    """Opens stores on one shared spool; closes them all at the end."""

    def __init__(
        self,
        name: str,
        tmp_path: Path,
        redis_url: str,
        prefix: str,
        servers: list[RedisServer] | None = None,
    ) -> None:
        self.name = name
        self._tmp_path = tmp_path
        self._redis_url = redis_url
        self._prefix = prefix
        self._servers = servers or []
        self._opened: list[Store] = []
        self._workers = 0

    async def open(self) -> Store:
        """Another process on the same spool (SQLite: its own shard, as a worker has)."""
        store: Store
        if self.name == "sqlite":
            store = SqliteStore(self._tmp_path / "spool", write_shard=self._workers)
        else:
            store = RedisStore(self._redis_url, prefix=self._prefix, lease_seconds=LEASE)
        self._workers += 1
        await store.open()
        self._opened.append(store)
        return store

    async def crash(self, store: Store) -> None:
        """Stop ``store`` the way a killed process stops: nothing handed back."""
        self._opened.remove(store)
        if isinstance(store, RedisStore):
            await store.close(release=False)
        else:
            await store.close()  # SQLite's close leaves ``sending`` rows as they are

    async def replacement(self, dead: Store) -> Store:
        """What takes over from a process that died: SQLite, a worker on the dead one's shard
        (the supervisor restarts it); Redis, another node on the same queue."""
        if isinstance(dead, SqliteStore):
            store: Store = SqliteStore(self._tmp_path / "spool", write_shard=dead.write_shard)
            await store.open()
            self._opened.append(store)
            return store
        return await self.open()

    async def reader(self) -> Store:
        """A store that sees every process's deliveries (``gateway queue``'s view)."""
        if self.name == "sqlite":
            store: Store = SqliteStore(self._tmp_path / "spool", all_shards=True)
            await store.open()
            self._opened.append(store)
            return store
        return await self.open()

    @contextlib.contextmanager
    def outcomes_fail(self) -> Iterator[None]:
        """While inside, the engine itself refuses to record an outcome, as a full disk or a
        Redis that lost its replicas would. SQLite: a trigger (made over its own connection)
        aborts every status change other than a claim. Redis: ``min-replicas-to-write`` set
        beyond the replicas there are, so every write fails with ``NOREPLICAS``."""
        if self.name == "sqlite":
            spool = self._tmp_path / "spool"
            files = [shard_path(spool, n) for n in existing_shards(spool)]
            for path in files:
                with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
                    conn.execute(
                        "CREATE TRIGGER injected_fault BEFORE UPDATE OF status ON deliveries"
                        " WHEN NEW.status <> 'sending'"
                        " BEGIN SELECT RAISE(ABORT, 'injected fault: disk I/O error'); END"
                    )
                    conn.commit()
            try:
                yield
            finally:
                for path in files:
                    with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
                        conn.execute("DROP TRIGGER injected_fault")
                        conn.commit()
            return
        for server in self._servers:
            with server.client() as client:
                client.config_set("min-replicas-to-write", 10)
        try:
            yield
        finally:
            for server in self._servers:
                with server.client() as client:
                    client.config_set("min-replicas-to-write", 0)

    async def close_all(self) -> None:
        for store in reversed(self._opened):
            await store.close()
        self._opened.clear()


@pytest.fixture(params=["sqlite", "redis", "redis-sentinel", "redis-cluster"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """``redis-sentinel`` and ``redis-cluster`` run on ``tests/redistopology.py``'s setups (one
    each per session), under a fresh key prefix per test."""
    url, prefix = "", ""
    servers: list[RedisServer] = []
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url, prefix = server.url, request.getfixturevalue("redis_prefix")
        servers = [server]
    elif request.param == "redis-sentinel":
        sentinel: SentinelSetup = request.getfixturevalue("redis_sentinel")
        url, prefix = sentinel.url, f"test-{uuid.uuid4().hex[:12]}"
        servers = sentinel.servers
    elif request.param == "redis-cluster":
        cluster: ClusterSetup = request.getfixturevalue("redis_cluster")
        url, prefix = cluster.url, f"test-{uuid.uuid4().hex[:12]}"
        servers = cluster.servers
    b = Backend(request.param, tmp_path, url, prefix, servers)
    yield b
    await b.close_all()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()
