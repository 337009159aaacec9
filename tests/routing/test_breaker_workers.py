"""A real ``gateway serve`` with two workers: the configured breaker threshold holds per node.

Each worker keeps its own breakers; the router scales the thresholds by the worker count, so a
failing provider takes no more failed sends from the node than ``[routing.breaker] failures``.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import Sink, _SinkHandler, wait_until
from tests.ops.conftest import ServeProcess
from tests.redisserver import free_port

FAILURES = 4
MESSAGES = 30


class _RefusingHandler(_SinkHandler):
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(self.sink, RefusingSink)
        with self.sink.lock:
            self.sink.refused += 1
        return "451 4.3.0 try again later"


class RefusingSink(Sink):
    """A relay that answers every RCPT with a temporary failure, and counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    def handler(self) -> _SinkHandler:
        return _RefusingHandler(self)


def serve_config(tmp_path: Path, smtp: int, broken: int, good: int) -> str:
    return f"""
[gateway]
hostname = "gw.test"
data_dir = "{tmp_path / "data"}"
workers = 2
shutdown_grace = "10s"

[smtp]
listeners = [{{ name = "dev", port = {smtp}, tls = "none", insecure_auth = true }}]

[tenants.acme]
smtp_networks = ["127.0.0.1/32"]

[delivery]
providers = ["broken", "good"]
retry_schedule = ["1h"]

[routing.breaker]
failures = {FAILURES}
min_sends = 1000
cooldown = "1h"

[providers.broken]
type = "smtp"
host = "127.0.0.1"
port = {broken}
tls = "none"

[providers.good]
type = "smtp"
host = "127.0.0.1"
port = {good}
tls = "none"
"""


def can_connect(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            return client.noop()[0] == 250
    except OSError:
        return False


def test_two_workers_send_no_more_failures_to_a_broken_provider_than_configured(
    tmp_path: Path, sink: Sink
) -> None:
    broken = RefusingSink()
    broken.start()
    smtp = free_port()
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(serve_config(tmp_path, smtp, broken.port, sink.port))
    gateway = ServeProcess(config_file, tmp_path)
    try:
        wait_until(lambda: can_connect(smtp), 30, "gateway listening")
        for n in range(MESSAGES):
            # One session per message, so both workers (SO_REUSEPORT) take some, and one
            # message at a time, so no send is in flight when a breaker opens.
            address = f"user{n}@example.test"
            with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as client:
                client.sendmail(
                    "app@acme.test",
                    [address],
                    f"From: app@acme.test\r\nTo: {address}\r\nSubject: {n}\r\n\r\nhi\r\n",
                )
            wait_until(lambda a=address: bool(sink.to(a)), 20, f"message {n} delivered")
    finally:
        code = gateway.stop()
        broken.stop()
    assert code == 0
    assert len(sink.messages) == MESSAGES
    # Both workers met the broken provider and opened their breaker; together they sent it
    # no more than the configured number of failures.
    assert gateway.text().count("breaker opened") == 2, gateway.text()
    assert broken.refused <= FAILURES, broken.refused
