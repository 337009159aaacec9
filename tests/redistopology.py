"""Redis Sentinel and Redis Cluster for the tests: real ``redis-server`` processes on loopback.

``SentinelSetup`` is one master, one replica and one sentinel watching them as ``mymaster``;
``ClusterSetup`` is three masters joined by ``redis-cli --cluster create``. Every process is
started on a free 127.0.0.1 port and stopped by its PID. As with ``tests/redisserver.py``, the
tests fail — never skip — when ``redis-server`` or ``redis-cli`` is missing.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.redisserver import REDIS_SERVER, RedisServer, free_port

REDIS_CLI = "/usr/bin/redis-cli"
SERVICE = "mymaster"


def _binary(name: str, fallback: str) -> str:
    binary = shutil.which(name) or fallback
    if not Path(binary).is_file():
        pytest.fail(f"{name} is missing: run scripts/test.sh (it installs redis-server)")
    return binary


def poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Call ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class SentinelProcess:
    """``redis-server <conf> --sentinel`` monitoring ``master_port`` as ``mymaster``."""

    def __init__(self, directory: Path, master_port: int) -> None:
        binary = _binary("redis-server", REDIS_SERVER)
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = directory / "sentinel.log"
        config = directory / "sentinel.conf"  # Sentinel rewrites it: it must be its own file
        config.write_text(
            f"bind 127.0.0.1\n"
            f"port {self.port}\n"
            f"dir {directory}\n"
            f"logfile {self.log}\n"
            "daemonize no\n"
            "sentinel resolve-hostnames no\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
        )
        self.process = subprocess.Popen(
            [binary, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def master_port(self) -> int | None:
        """The port Sentinel currently names for ``mymaster``."""
        with self.client() as client:
            found = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(found[1]) if found else None

    def replicas(self) -> list[dict[str, str]]:
        """What Sentinel knows of the master's replicas (``SENTINEL REPLICAS``)."""
        with self.client() as client:
            rows = client.execute_command("SENTINEL", "REPLICAS", SERVICE)
        found = []
        for row in rows:
            if isinstance(row, dict):
                found.append({_text(k): _text(v) for k, v in row.items()})
            else:
                found.append({_text(k): _text(v) for k, v in zip(row[::2], row[1::2], strict=True)})
        return found

    def stop(self) -> None:
        _stop(self.process)


class SentinelSetup:
    """A master, its replica and a sentinel; ``url`` is the gateway's ``redis+sentinel://``."""

    def __init__(self, directory: Path) -> None:
        self.servers: list[RedisServer] = []
        self.sentinel: SentinelProcess | None = None
        try:
            # No 5 s wait for more replicas before a full sync (Redis's default delay).
            master = RedisServer(directory / "master", "--repl-diskless-sync-delay", "0")
            self.servers.append(master)
            replica = RedisServer(
                directory / "replica", "--replicaof", "127.0.0.1", str(master.port)
            )
            self.servers.append(replica)
            poll(lambda: _replica_in_sync(replica), 15, "the replica to sync with the master")
            self.sentinel = SentinelProcess(directory / "sentinel", master.port)
            poll(
                lambda: any(
                    r.get("port") == str(replica.port)
                    and r.get("flags") == "slave"
                    and r.get("master-link-status") == "ok"
                    for r in self._sentinel().replicas()
                ),
                30,
                "the sentinel to see the replica connected (so it may promote it)",
            )
        except BaseException:
            self.stop()
            raise

    def _sentinel(self) -> SentinelProcess:
        assert self.sentinel is not None
        return self.sentinel

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self._sentinel().port}/{SERVICE}"

    def server(self, port: int) -> RedisServer:
        """The server (master or replica) listening on ``port``."""
        return next(s for s in self.servers if s.port == port)

    def master(self) -> RedisServer:
        """The server Sentinel currently names as master."""
        port = self._sentinel().master_port()
        assert port is not None
        return self.server(port)

    def failover(self, timeout: float = 40) -> RedisServer:
        """``SENTINEL FAILOVER``; wait until the replica is promoted, Sentinel names it, and
        the old master has been turned into its replica (Sentinel does that ~10 s after the
        promotion; until then the old master still accepts writes, which the resync drops)."""
        old = self.master()
        with self._sentinel().client() as client:
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)

        def done() -> bool:
            port = self._sentinel().master_port()
            if port is None or port == old.port:
                return False
            with self.server(port).client() as client:
                if _text(client.info("replication")["role"]) != "master":
                    return False
            with old.client() as client:
                info = client.info("replication")
            return (
                _text(info["role"]) == "slave"
                and int(info.get("master_port", 0)) == port
                and _text(info.get("master_link_status", "")) == "up"
            )

        poll(done, timeout, "the Sentinel failover to complete")
        return self.master()

    def stop(self) -> None:
        """Stop every process (each by its PID), the sentinel first so it fails nothing over."""
        if self.sentinel is not None:
            self.sentinel.stop()
        for server in reversed(self.servers):
            server.stop()


class ClusterSetup:
    """Three cluster-enabled masters sharing the 16384 slots; ``url`` is ``redis+cluster://``
    naming the first two as seeds."""

    def __init__(self, directory: Path) -> None:
        cli = _binary("redis-cli", REDIS_CLI)
        self.servers: list[RedisServer] = []
        try:
            for n in range(3):
                node_dir = directory / f"node{n}"
                self.servers.append(
                    RedisServer(
                        node_dir,
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                        # A free bus port of its own: the default (port + 10000) may be taken
                        # or above 65535.
                        "--cluster-port",
                        str(free_port()),
                    )
                )
            subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{s.port}" for s in self.servers),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            poll(self._ok, 30, "cluster_state:ok on every node")
        except BaseException:
            self.stop()
            raise

    def _ok(self) -> bool:
        for server in self.servers:
            with server.client() as client:
                info = _text(client.execute_command("CLUSTER", "INFO"))
                if "cluster_state:ok" not in info:
                    return False
        return True

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers[:2])

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def _replica_in_sync(replica: RedisServer) -> bool:
    with replica.client() as client:
        info = client.info("replication")
    return _text(info.get("master_link_status", "")) == "up"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@contextlib.contextmanager
def sentinel_setup(directory: Path) -> Iterator[SentinelSetup]:
    """A ``SentinelSetup`` in ``directory``, stopped on exit."""
    setup = SentinelSetup(directory)
    try:
        yield setup
    finally:
        setup.stop()


@contextlib.contextmanager
def cluster_setup(directory: Path) -> Iterator[ClusterSetup]:
    """A ``ClusterSetup`` in ``directory``, stopped on exit."""
    setup = ClusterSetup(directory)
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """One Sentinel setup for the session. Tests that fail it over make their own."""
    with sentinel_setup(tmp_path_factory.mktemp("sentinel")) as setup:
        yield setup


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    """One three-master Redis Cluster for the session."""
    with cluster_setup(tmp_path_factory.mktemp("cluster")) as setup:
        yield setup
