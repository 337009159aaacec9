"""Per-listener connection limits: sessions in total, per client, new connections per minute.
A client over a limit gets ``421 4.7.0`` with the reason (never a silent close), the refusal
is counted in /metrics and logged with the client's address; trusted networks are exempt from
the per-client limits."""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from gateway.clock import FakeClock
from gateway.submission.connection_limits import client_key
from tests.conftest import GatewayThread, Sink, make_config
from tests.integration.smtp_client import RawSession, limit_hits

LIMITS = """
[[smtp.listeners]]
name = "dev"
port = 0
tls = "none"
insecure_auth = true
max_sessions = 6
max_sessions_per_client = 3
max_connections_per_minute = 5

[tenants.default]
smtp_networks = ["127.0.0.1/32"]
allow_null_sender = true

[delivery]
providers = ["relay"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
"""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gw(tmp_path, sink: Sink, gateway_factory, clock: FakeClock) -> GatewayThread:
    return gateway_factory(make_config(tmp_path, LIMITS, port=sink.port), clock=clock)


@pytest.fixture
def sessions() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def open_session(gw: GatewayThread, source: str, stack: ExitStack) -> str:
    """Connect from ``source``; the first reply (220 greeting or 421 refusal)."""
    return stack.enter_context(RawSession(gw.port("dev"), source)).reply()


def test_sessions_per_client_are_capped_with_a_421(
    gw: GatewayThread, sessions: ExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        greetings = [open_session(gw, "127.0.0.2", sessions) for _ in range(4)]
    assert [g[:3] for g in greetings] == ["220", "220", "220", "421"]
    assert greetings[3].startswith("421 4.7.0 Too many connections from your address")
    assert limit_hits(gw.gateway, "dev", "max_sessions_per_client") == 1
    assert any(
        "max_sessions_per_client" in r.getMessage() and "client=127.0.0.2" in r.getMessage()
        for r in caplog.records
    )
    # Another client is not affected; a session that ends frees its place.
    assert open_session(gw, "127.0.0.3", sessions).startswith("220")


def test_a_flood_of_refusals_is_counted_in_full_but_logged_once_a_minute(
    gw: GatewayThread, sessions: ExitStack, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(3 + 4):
            open_session(gw, "127.0.0.2", sessions)
        clock.advance(61)
        assert open_session(gw, "127.0.0.2", sessions).startswith("421")
    assert limit_hits(gw.gateway, "dev", "max_sessions_per_client") == 5
    lines = [r.getMessage() for r in caplog.records if "client=127.0.0.2" in r.getMessage()]
    assert lines == [
        "smtp limit max_sessions_per_client listener=dev client=127.0.0.2",
        "smtp limit max_sessions_per_client listener=dev client=127.0.0.2 (3 more not logged)",
    ]


def test_a_closed_session_frees_its_place(gw: GatewayThread) -> None:
    for _ in range(3):
        with RawSession(gw.port("dev"), "127.0.0.2") as session:
            assert session.reply().startswith("220")
            assert session.command("QUIT").startswith("221")
            assert session.closed()
    with RawSession(gw.port("dev"), "127.0.0.2") as session:
        assert session.reply().startswith("220")


def test_sessions_in_total_are_capped(gw: GatewayThread, sessions: ExitStack) -> None:
    sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    greetings = [open_session(gw, s, sessions) for s in sources for _ in range(2)]
    assert all(g.startswith("220") for g in greetings)
    refused = open_session(gw, "127.0.0.5", sessions)
    assert refused.startswith("421 4.7.0 Too many connections"), refused
    assert limit_hits(gw.gateway, "dev", "max_sessions") == 1


def test_new_connections_per_minute_are_capped(gw: GatewayThread, clock: FakeClock) -> None:
    def connect() -> str:
        with RawSession(gw.port("dev"), "127.0.0.2") as session:
            greeting = session.reply()
            if greeting.startswith("220"):
                session.command("QUIT")
            return greeting

    greetings = [connect() for _ in range(6)]
    assert [g[:3] for g in greetings] == ["220"] * 5 + ["421"]
    assert greetings[5].startswith("421 4.7.0 Too many connections per minute")
    assert limit_hits(gw.gateway, "dev", "max_connections_per_minute") == 1
    clock.advance(61)
    assert connect().startswith("220"), "a new minute, a new allowance"


def test_trusted_networks_are_exempt_from_per_client_limits(
    gw: GatewayThread, sessions: ExitStack, sink: Sink
) -> None:
    """127.0.0.1 is the tenant's trusted network: past the per-client cap (3) and the rate
    (5 a minute) it still connects and sends."""
    greetings = [open_session(gw, "127.0.0.1", sessions) for _ in range(5)]
    assert all(g.startswith("220") for g in greetings)
    with smtplib.SMTP("127.0.0.1", gw.port("dev"), timeout=10) as client:
        client.sendmail("a@example.com", ["b@example.org"], b"From: a@example.com\r\n\r\nhi\r\n")


def test_ipv6_clients_are_counted_per_prefix() -> None:
    """One site holds a whole /64: its addresses count as one client; IPv4-mapped addresses
    count as the IPv4 address."""
    assert client_key("2001:db8:1:2::5", 64) == client_key("2001:db8:1:2:ffff::9", 64)
    assert client_key("2001:db8:1:2::5", 64) != client_key("2001:db8:1:3::5", 64)
    assert client_key("::ffff:192.0.2.7", 64) == "192.0.2.7"
    assert client_key("192.0.2.7", 64) == "192.0.2.7"
