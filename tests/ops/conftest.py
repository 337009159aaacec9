"""What the operations tests share: a real HTTP receiver for webhooks, a gateway with the HTTP
API and an admin key relaying to the real sink, and a ``gateway serve`` process."""

from __future__ import annotations

import base64
import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.tenants import generate_api_key, hash_api_key


class Received:
    def __init__(self, path: str, headers: dict[str, str], body: bytes) -> None:
        self.path = path
        self.headers = headers
        self.body = body


class Receiver:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 that records every POST and answers with the
    next scripted status (200 once the script is empty)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    server.thread.join(10)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


ADMIN_KEY = generate_api_key()

OPS_CONFIG = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[http]
enabled = true
port = 0
rate_limit = 0

[tenants.acme]
smtp_networks = ["127.0.0.1/32"]

[[tenants.acme.api_keys]]
name = "ops"
key_hash = "{key_hash}"
scopes = ["admin"]
{webhooks}

[delivery]
providers = ["relay"]
retry_schedule = ["1m"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
"""
"""A ``make_config`` template: tenant ``acme`` (loopback trusted, one admin key
``ADMIN_KEY``), the HTTP API on a free port, delivery to the sink on ``{port}``."""


def ops_config_args(port: int, webhooks: str = "") -> dict[str, object]:
    return {"key_hash": hash_api_key(ADMIN_KEY), "webhooks": webhooks, "port": port}


class ServeProcess:
    """``gateway serve`` in a subprocess (its own process group), logs to a file."""

    def __init__(self, config_file: Path, cwd: Path) -> None:
        self.log = cwd / "serve.log"
        self._log = open(self.log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "-c", str(config_file), "serve"],
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode
