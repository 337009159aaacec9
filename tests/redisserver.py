"""A real ``redis-server`` for the tests: started on a free loopback port, stopped by its PID.

One server per test session (``redis_server``); each test that uses it gets its own key prefix
(``redis_prefix``), and every key under that prefix is deleted afterwards. The tests fail —
never skip — when ``redis-server`` is missing (``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REDIS_SERVER = "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` bound to 127.0.0.1 in ``directory``, AOF on with ``appendfsync always``
    (what docs/redis.md recommends), no RDB snapshots."""

    def __init__(self, directory: Path, *extra: str) -> None:
        binary = shutil.which("redis-server") or REDIS_SERVER
        if not Path(binary).is_file():
            pytest.fail("redis-server is missing: run scripts/test.sh (it installs redis-server)")
        self.port = free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "redis.log"
        self._command = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--logfile",
            str(self.log),
            "--daemonize",
            "no",
            *extra,
        ]
        self.start()

    def start(self) -> None:
        """Start the server (again, after ``kill``) on its port and files; wait until it
        answers."""
        self.process = subprocess.Popen(
            self._command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 15
        while not self._ready():
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"redis-server exited: {self.process.stderr.read() if self.process.stderr else ''}"
            )
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (by its PID), as a crash would; ``start`` brings it back."""
        self.process.kill()
        self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_prefix(redis_server: RedisServer) -> Iterator[str]:
    """A key prefix of this test's own; its keys are removed when the test ends."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    with redis_server.client() as client:
        keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
