"""A real ``gateway serve`` limited to 1,024 file descriptors, while a hostile client opens
2,000 idle connections from ten addresses: the per-client cap refuses all but 20 per address
with ``421 4.7.0``, the gateway's descriptors stay bounded, and a legitimate client still
connects, says EHLO and has its message accepted within a second."""

from __future__ import annotations

import os
import resource
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Sink, wait_until
from tests.redisserver import free_port

HOSTILE_SOURCES = [f"127.0.0.{n}" for n in range(2, 12)]
HOSTILE_CONNECTIONS = 2000
GATEWAY_FDS = 1024

CONFIG = """
[gateway]
hostname = "gw.test"
data_dir = "{data}"

[[smtp.listeners]]
name = "dev"
port = {smtp}
tls = "none"
insecure_auth = true
max_sessions = 500
max_sessions_per_client = 20
max_connections_per_minute = 0

[tenants.default]
smtp_networks = ["127.0.0.1/32"]
allow_null_sender = true

[delivery]
providers = ["relay"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {sink}
tls = "none"
"""


@pytest.fixture
def enough_descriptors() -> Iterator[None]:
    """The test process holds 2,000 client sockets: raise its soft limit (not the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = HOSTILE_CONNECTIONS + 512
    assert hard == resource.RLIM_INFINITY or hard >= wanted, f"hard RLIMIT_NOFILE {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def gateway_process(tmp_path: Path, sink: Sink) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    smtp = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data", smtp=smtp, sink=sink.port))
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "-c", str(config), "serve"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (GATEWAY_FDS, GATEWAY_FDS))
    try:
        wait_until(lambda: _accepts(smtp), timeout=30, what="the gateway to listen")
        yield process, smtp
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def _accepts(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            return client.noop()[0] == 250
    except OSError:
        return False


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.serial
def test_2000_idle_connections_do_not_keep_out_a_legitimate_client(
    enough_descriptors: None,
    gateway_process: tuple[subprocess.Popen[bytes], int],
    sink: Sink,
) -> None:
    process, port = gateway_process
    baseline = open_descriptors(process.pid)
    hostile: list[socket.socket] = []
    try:
        for i in range(HOSTILE_CONNECTIONS):
            source = HOSTILE_SOURCES[i % len(HOSTILE_SOURCES)]
            hostile.append(
                socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0))
            )
            if i % 100 == 99:
                # Keep pace with the gateway (its first line means it accepted them all so
                # far), so the kernel's accept queue does not overflow into SYN retries.
                _first_line(hostile[-1], peek=True)

        greetings = [_first_line(s) for s in hostile[:: len(HOSTILE_SOURCES) * 10]]

        # 20 per address are admitted (the first 200 sockets), every later one refused.
        assert all(g.startswith(b"220") for g in greetings[:2]), greetings[:2]
        assert all(g.startswith(b"421 4.7.0 Too many connections") for g in greetings[2:])
        wait_until(
            lambda: open_descriptors(process.pid) < baseline + 20 * len(HOSTILE_SOURCES) + 50,
            what="refused connections to be closed by the gateway",
        )

        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            assert client.ehlo("legit.test")[0] == 250
            client.sendmail(
                "app@example.com", ["user@example.org"], b"From: app@example.com\r\n\r\nhi\r\n"
            )
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, f"the legitimate client took {elapsed:.2f}s"
        assert process.poll() is None, "the gateway is still running"
        assert open_descriptors(process.pid) < GATEWAY_FDS // 2
    finally:
        for sock in hostile:
            sock.close()
    wait_until(lambda: len(sink.messages) == 1, what="the legitimate message at the sink")


def _first_line(sock: socket.socket, peek: bool = False) -> bytes:
    """The first line the gateway sent, read (or only peeked at) with a 10 s bound."""
    sock.settimeout(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = sock.recv(1000, socket.MSG_PEEK)
        if b"\r\n" in data or not data:
            break
    return data if peek else sock.recv(len(data))
