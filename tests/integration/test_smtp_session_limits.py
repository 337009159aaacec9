"""Bounds on a session: silence (no bytes, not no commands), its whole life, a DATA upload,
a TLS handshake, and commands that do nothing. Each ends the session with a ``421`` before
the close — never silently — and is counted in /metrics.

Timeouts here are a second or two of real time: the timers run on the event loop's clock.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import Certificates, GatewayThread, Sink, make_config, wait_until
from tests.integration.smtp_client import RawSession, code, limit_hits

SESSION = """
[smtp]
timeout = 1.0
max_message_size = 4096
min_data_rate = 4096

[[smtp.listeners]]
name = "dev"
port = 0
tls = "none"
insecure_auth = true
max_session_time = 3.0
max_junk_commands = 5

[[smtp.listeners]]
name = "sub"
port = 0
tls = "starttls"
tls_handshake_timeout = 0.5

[[smtp.listeners]]
name = "smtps"
port = 0
tls = "implicit"
tls_handshake_timeout = 1.0

[smtp.tls]
cert_file = "{cert}"
key_file = "{key}"

[delivery]
providers = ["relay"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
"""
MESSAGE_HEAD = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: slow\r\n\r\n"


@pytest.fixture
def gw(tmp_path, sink: Sink, certificates: Certificates, gateway_factory) -> GatewayThread:
    config = make_config(
        tmp_path,
        SESSION,
        port=sink.port,
        cert=certificates.cert_file,
        key=certificates.key_file,
    )
    return gateway_factory(config)


def ready_for_data(gw: GatewayThread) -> RawSession:
    session = RawSession(gw.port("dev"))
    assert session.reply().startswith("220")
    assert session.command("EHLO client.test").startswith("250")
    assert session.command("MAIL FROM:<a@example.com>").startswith("250")
    assert session.command("RCPT TO:<b@example.org>").startswith("250")
    assert session.command("DATA").startswith("354")
    return session


def test_silence_gets_421_4_4_2_before_the_close(gw: GatewayThread) -> None:
    with RawSession(gw.port("dev")) as session:
        assert session.reply().startswith("220")
        assert session.command("EHLO client.test").startswith("250")
        started = time.monotonic()
        reply = session.reply()
        assert code(reply) == (421, "4.4.2"), reply
        assert 0.9 < time.monotonic() - started < 5
        assert session.closed()
    assert limit_hits(gw.gateway, "dev", "idle_timeout") == 1


def test_a_slow_upload_that_keeps_sending_is_accepted(gw: GatewayThread, sink: Sink) -> None:
    """One line every 0.35 s for 1.4 s: longer than ``timeout`` (1 s) but never silent, and
    within the DATA cap (1 s + 4096 / 4096 s = 2 s)."""
    with ready_for_data(gw) as session:
        session.send(MESSAGE_HEAD)
        for i in range(4):
            time.sleep(0.35)  # the client is slow on purpose; this is the scenario, not a wait
            session.send(f"line {i}")
        reply = session.command(".")
        assert code(reply) == (250, "2.0.0"), reply
    wait_until(lambda: len(sink.messages) == 1, what="the slow message at the sink")


def test_a_trickle_past_the_data_cap_gets_421(gw: GatewayThread) -> None:
    """Bytes keep coming, but DATA may last only ``timeout + max_message_size/min_data_rate``."""
    with ready_for_data(gw) as session:
        session.send(MESSAGE_HEAD)
        started = time.monotonic()
        reply = ""
        session.sock.settimeout(0.3)
        while time.monotonic() - started < 8:
            try:
                session.send("x")
                reply = session.reply()
                break
            except TimeoutError:
                continue
            except OSError:
                break
        assert code(reply) == (421, "4.4.2"), reply
        assert 1.9 < time.monotonic() - started < 6
    assert limit_hits(gw.gateway, "dev", "data_time") == 1


def test_a_busy_session_ends_at_its_time_limit(gw: GatewayThread) -> None:
    """A command every 0.4 s keeps the session from being silent, not alive forever."""
    with RawSession(gw.port("dev")) as session:
        assert session.reply().startswith("220")
        started = time.monotonic()
        replies = []
        while time.monotonic() - started < 8:
            time.sleep(0.4)  # a client that pings on a schedule: the scenario itself
            reply = session.command("EHLO client.test")
            replies.append(reply)
            if not reply.startswith("250"):
                break
        assert code(replies[-1]) == (421, "4.7.0"), replies[-1]
        assert 2.9 < time.monotonic() - started < 6
        assert session.closed()
    assert limit_hits(gw.gateway, "dev", "max_session_time") == 1


@pytest.mark.parametrize("junk", ["NOOP", "RSET", "VRFY <a@example.com>", "HELP"])
def test_commands_that_do_nothing_are_limited(gw: GatewayThread, junk: str) -> None:
    with RawSession(gw.port("dev")) as session:
        assert session.reply().startswith("220")
        assert session.command("EHLO client.test").startswith("250")
        replies = [session.command(junk) for _ in range(6)]
        assert all(r[:1] in "25" for r in replies[:5]), replies
        assert code(replies[5]) == (421, "4.7.0"), replies[5]
        assert session.closed()
    assert limit_hits(gw.gateway, "dev", "max_junk_commands") == 1


def test_an_accepted_message_resets_the_junk_count(gw: GatewayThread) -> None:
    with RawSession(gw.port("dev")) as session:
        assert session.reply().startswith("220")
        assert session.command("EHLO client.test").startswith("250")
        for _ in range(2):
            assert all(session.command("NOOP").startswith("250") for _ in range(4))
            assert session.command("MAIL FROM:<a@example.com>").startswith("250")
            assert session.command("RCPT TO:<b@example.org>").startswith("250")
            assert session.command("DATA").startswith("354")
            assert session.command(MESSAGE_HEAD + b"hi\r\n.").startswith("250")


def test_an_implicit_tls_socket_that_never_handshakes_is_closed(gw: GatewayThread) -> None:
    """200 sockets that never start TLS: each is closed after ``tls_handshake_timeout``."""
    socks = [socket.create_connection(("127.0.0.1", gw.port("smtps")), 10) for _ in range(200)]
    try:
        started = time.monotonic()
        for sock in socks:
            sock.settimeout(max(0.1, 6 - (time.monotonic() - started)))
            assert sock.recv(100) == b""
        assert time.monotonic() - started < 6
    finally:
        for sock in socks:
            sock.close()


def test_a_stalled_starttls_handshake_is_cut(gw: GatewayThread) -> None:
    with RawSession(gw.port("sub")) as session:
        assert session.reply().startswith("220")
        assert session.command("EHLO client.test").startswith("250")
        assert session.command("STARTTLS").startswith("220")
        started = time.monotonic()
        assert session.closed()
        assert 0.4 < time.monotonic() - started < 5
    assert limit_hits(gw.gateway, "sub", "tls_handshake_timeout") == 1


def test_a_completed_starttls_handshake_is_not_cut(
    gw: GatewayThread, certificates: Certificates
) -> None:
    with RawSession(gw.port("sub")) as session:
        assert session.reply().startswith("220")
        assert session.command("EHLO client.test").startswith("250")
        assert session.command("STARTTLS").startswith("220")
        context = certificates.client_context()
        tls = context.wrap_socket(session.sock, server_hostname="localhost")
        tls.sendall(b"EHLO client.test\r\n")
        assert tls.recv(1000).startswith(b"250")
        time.sleep(0.7)  # past the handshake deadline (0.5 s), within the idle timeout (1 s)
        tls.sendall(b"NOOP\r\n")
        assert tls.recv(1000).startswith(b"250")
        tls.close()
