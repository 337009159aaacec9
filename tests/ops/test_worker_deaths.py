"""A real ``gateway serve`` with two workers: a worker SIGKILLed with acknowledged mail in
flight is replaced, its shard drains, and the other worker keeps serving meanwhile; and 20
fresh starts on a new data dir all come up clean (no first-start race on the shared files)."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.message import DeliveryStatus
from gateway.store.sqlite import SqliteStore
from tests.conftest import Sink, _SinkHandler, wait_until
from tests.ops.conftest import ServeProcess
from tests.redisserver import free_port

CONFIG = """
[gateway]
hostname = "gw.test"
data_dir = "{data}"
workers = 2
shutdown_grace = "5s"

[smtp]
listeners = [{{ name = "dev", port = {smtp}, tls = "none", insecure_auth = true }}]

[http]
enabled = true
port = {http}
rate_limit = 0

[tenants.acme]
smtp_networks = ["127.0.0.1/32"]

[delivery]
providers = ["relay"]
retry_schedule = ["1s"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {sink}
tls = "none"
"""


class HeldSink(Sink):
    """The sink, answering DATA only once ``gate`` is set: deliveries stay in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.held = 0

    def handler(self) -> _SinkHandler:
        sink = self

        class Held(_SinkHandler):
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
                sink.held += 1
                await asyncio.to_thread(sink.gate.wait, 60)
                return await super().handle_DATA(server, session, envelope)

        return Held(self)


@pytest.fixture
def held_sink() -> Iterator[HeldSink]:
    server = HeldSink()
    server.start()
    yield server
    server.gate.set()
    server.stop()


def send(port: int, recipient: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.sendmail(
            "app@example.com", [recipient], b"From: <app@example.com>\r\nSubject: t\r\n\r\nbody\r\n"
        )


def send_until_acknowledged(port: int, recipient: str, tries: int = 5) -> None:
    """A connection queued on the killed worker's socket is reset, never acknowledged; a
    client tries again (as every MTA does), and the live worker answers."""
    for attempt in range(tries):
        try:
            send(port, recipient)
            return
        except (smtplib.SMTPServerDisconnected, ConnectionError):
            if attempt == tries - 1:
                raise


def workers_of(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children]


def sending(spool: Path) -> int:
    async def count() -> int:
        store = SqliteStore(spool, all_shards=True)
        await store.open()
        try:
            return (await store.counts()).get(DeliveryStatus.SENDING, 0)
        finally:
            await store.close()

    return asyncio.run(count())


def ready(http: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{http}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def restarts(http: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{http}/metrics", timeout=10).text
    counted = [line for line in text.splitlines() if line.startswith("gateway_worker_restarts{")]
    assert counted, text
    return sum(float(line.rsplit(" ", 1)[1]) for line in counted)


def test_a_killed_worker_is_replaced_and_its_shard_drains(
    tmp_path: Path, held_sink: HeldSink
) -> None:
    smtp, http = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    data = tmp_path / "data"
    config.write_text(CONFIG.format(data=data, smtp=smtp, http=http, sink=held_sink.port))
    gateway = ServeProcess(config, tmp_path)
    try:
        wait_until(lambda: gateway.text().count("ready (smtp") == 2, 30, "both workers ready")
        before = [f"r{n}@example.org" for n in range(20)]
        for recipient in before:  # a new connection each: the kernel spreads them over both
            send(smtp, recipient)
        wait_until(lambda: sending(data / "spool") == 20, 30, "every delivery in flight")

        victim = workers_of(gateway.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        # The other worker keeps serving while the dead one is replaced.
        after = [f"s{n}@example.org" for n in range(5)]
        for recipient in after:
            send_until_acknowledged(smtp, recipient)
        held_sink.gate.set()

        def everyone_received() -> bool:
            got = {r for m in held_sink.messages for r in m.rcpt_tos}
            return got >= set(before + after)

        wait_until(everyone_received, 60, "every acknowledged message delivered")
        wait_until(lambda: sending(data / "spool") == 0, 30, "nothing left in flight")
        assert victim not in workers_of(gateway.process.pid)
        assert len(workers_of(gateway.process.pid)) == 2
        assert f"(pid {victim}) killed by SIGKILL unexpectedly" in gateway.text()
        wait_until(lambda: ready(http), 30, "the replacement ready")
        for _ in range(4):  # new connections: both workers answer the same
            assert restarts(http) == 1
    finally:
        code = gateway.stop()
    assert code == 0, gateway.text()[-3000:]


FRESH_STARTS = 20


def test_fresh_two_worker_starts_on_a_new_data_dir_are_all_clean(tmp_path: Path) -> None:
    for n in range(FRESH_STARTS):
        run = tmp_path / f"start-{n}"
        run.mkdir()
        config = run / "gateway.toml"
        smtp = free_port()
        text = CONFIG.format(data=run / "data" / "new", smtp=smtp, http=0, sink=9)
        config.write_text(text.replace("enabled = true", "enabled = false"))
        gateway = ServeProcess(config, run)
        try:
            wait_until(
                lambda g=gateway: (
                    g.text().count("ready (smtp") == 2 or g.process.poll() is not None
                ),
                30,
                f"start {n}: both workers ready",
            )
        finally:
            code = gateway.stop()
        log = gateway.text()
        assert code == 0 and log.count("ready (smtp") == 2, f"start {n}:\n{log[-3000:]}"
        assert "Traceback" not in log and "locked" not in log, f"start {n}:\n{log[-3000:]}"
