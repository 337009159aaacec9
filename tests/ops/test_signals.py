"""A real ``gateway serve`` (two workers): SIGHUP reloads or keeps the old config, SIGTERM under
a load of SMTP sessions exits 0 and loses no acknowledged message."""

from __future__ import annotations

import json
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from gateway.store.sqlite import SqliteStore
from gateway.tenants import generate_api_key, hash_api_key
from tests.conftest import Sink, wait_until
from tests.ops.conftest import ServeProcess, new_secret
from tests.redisserver import free_port

KEY_A, KEY_B = generate_api_key(), generate_api_key()


def serve_config(tmp_path: Path, smtp: int, http: int, sink: int, key: str, hook: str) -> str:
    return f"""
[gateway]
hostname = "gw.test"
data_dir = "{tmp_path / "data"}"
workers = 2
log_format = "json"
shutdown_grace = "10s"

[smtp]
listeners = [{{ name = "dev", port = {smtp}, tls = "none", insecure_auth = true }}]

[http]
enabled = true
port = {http}
rate_limit = 0

[tenants.acme]
smtp_networks = ["127.0.0.1/32"]

[[tenants.acme.api_keys]]
name = "ops"
key_hash = "{hash_api_key(key)}"
scopes = ["admin"]

[tenants.acme.webhooks.{hook}]
url = "http://127.0.0.1:9/{hook}"
secret = "{new_secret()}"

[delivery]
providers = ["relay"]
retry_schedule = ["1s"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {sink}
tls = "none"
"""


def get(http: int, path: str, key: str) -> httpx.Response:
    # A new connection each time, so both workers (SO_REUSEPORT) get asked.
    return httpx.get(
        f"http://127.0.0.1:{http}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def is_ready(http: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{http}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_sighup_applies_a_good_file_and_keeps_running_on_a_broken_one(
    tmp_path: Path, sink: Sink
) -> None:
    smtp, http = free_port(), free_port()
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(serve_config(tmp_path, smtp, http, sink.port, KEY_A, "crm"))
    gateway = ServeProcess(config_file, tmp_path)
    try:
        wait_until(lambda: is_ready(http), 30, "gateway ready")
        assert all(get(http, "/v1/webhooks", KEY_A).status_code == 200 for _ in range(6))

        config_file.write_text("[smtp\nthis is not TOML\n")
        gateway.signal(signal.SIGHUP)
        wait_until(lambda: gateway.text().count("reload rejected") == 2, 20, "both workers refuse")
        assert "invalid TOML" in gateway.text()
        assert gateway.process.poll() is None
        assert all(get(http, "/v1/webhooks", KEY_A).status_code == 200 for _ in range(6))

        config_file.write_text(serve_config(tmp_path, smtp, http, sink.port, KEY_B, "billing"))
        gateway.signal(signal.SIGHUP)
        wait_until(
            lambda: gateway.text().count("configuration reloaded") == 2, 20, "both workers reload"
        )
        for _ in range(6):
            assert get(http, "/v1/webhooks", KEY_A).status_code == 401
            answer = get(http, "/v1/webhooks", KEY_B)
            assert answer.status_code == 200
            assert [e["name"] for e in answer.json()] == ["billing"]

        status = subprocess.run(
            [sys.executable, "-m", "gateway", "-c", str(config_file), "status"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert "READY" in status.stdout and "store" in status.stdout
    finally:
        code = gateway.stop()
    assert code == 0
    lines = [line for line in gateway.text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert any(r["msg"] == "worker 1 stopped" for r in records)
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)


class Client(threading.Thread):
    """One SMTP session sending until the server stops answering (or its own budget)."""

    def __init__(self, port: int, number: int, budget: int = 80) -> None:
        super().__init__(daemon=True)
        self.port, self.number, self.budget = port, number, budget
        self.acked: list[str] = []
        self.refused = 0

    def run(self) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as client:
                client.ehlo()
                for n in range(self.budget):
                    client.mail("app@acme.test")
                    client.rcpt(f"c{self.number}-{n}@example.org")
                    code, reply = client.data(
                        f"From: app@acme.test\r\nSubject: {self.number}/{n}\r\n\r\nbody\r\n"
                    )
                    if code != 250:
                        self.refused += 1
                        return
                    self.acked.append(reply.decode().rsplit(" ", 1)[-1])
        except (smtplib.SMTPException, OSError):
            self.refused += 1  # 421 at MAIL, or the session was closed: nothing acknowledged


def test_sigterm_under_load_exits_0_and_loses_no_acknowledged_message(
    tmp_path: Path, sink: Sink
) -> None:
    smtp, http = free_port(), free_port()
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(serve_config(tmp_path, smtp, http, sink.port, KEY_A, "crm"))
    gateway = ServeProcess(config_file, tmp_path)
    clients: list[Client] = []
    try:
        wait_until(lambda: is_ready(http), 30, "gateway ready")
        clients = [Client(smtp, n) for n in range(8)]
        for client in clients:
            client.start()
        wait_until(lambda: sum(len(c.acked) for c in clients) >= 120, 30, "load under way")
        gateway.signal(signal.SIGTERM)
        started = time.monotonic()
        code = gateway.process.wait(30)
        stopped_in = time.monotonic() - started
        for client in clients:
            client.join(30)
    finally:
        gateway.stop()
    assert code == 0
    assert stopped_in < 15
    acked = [i for c in clients for i in c.acked]
    assert len(acked) == len(set(acked)) >= 120
    assert any(c.refused for c in clients), "the load was still running at SIGTERM"

    # Everything acknowledged is in the spool (delivered already, or waiting).
    async def stored() -> set[str]:
        store = SqliteStore(tmp_path / "data" / "spool", all_shards=True)
        await store.open()
        try:
            return {i for i in acked if await store.get_message(i) is not None}
        finally:
            await store.close()

    import asyncio

    assert asyncio.run(stored()) == set(acked)
    # After a restart, every acknowledged message reaches the sink.
    restarted = ServeProcess(config_file, tmp_path)
    # Until its workers are up, a SIGTERM would find no handler yet in a fresh interpreter.
    wait_until(lambda: restarted.text().count(" ready (smtp") >= 2, 30, "the restarted gateway")

    def delivered() -> set[str]:
        with sink.lock:
            data = [m.data for m in sink.messages]
        return {m.group(1).decode() for d in data for m in [_QUEUE_ID.search(d)] if m}

    try:
        wait_until(lambda: set(acked) <= delivered(), 60, "every acknowledged message delivered")
    finally:
        assert restarted.stop() == 0


_QUEUE_ID = re.compile(rb"with ESMTP id ([0-9a-f]{22});")
