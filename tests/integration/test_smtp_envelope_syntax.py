"""Envelope paths are parsed per RFC 5321: what does not parse is refused ``553 5.1.3`` at its
command (never ``250`` and a bounce later); what does — quoted local parts, real address
literals, internationalized domains — is accepted and relayed (an IDN as given or as its
A-label)."""

from __future__ import annotations

import idna
import pytest

from tests.conftest import GatewayThread, Sink, make_config, wait_until
from tests.integration.smtp_client import RawSession, code

RELAY = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[delivery]
providers = ["relay"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
"""
MALFORMED = [
    '<"rcpt@probe.test>',
    "<rcpt@probe.test",
    "rcpt@probe.test>",
    "rcpt@probe.test",
    "<rcpt@[300.1.1.1]>",
    "<rcpt@[1.2.3]>",
    "<rcpt@[IPv6:2001:db8::zz]>",
    "<rcpt@[tag:whatever]>",
    "<rcpt@probe.test>>",
    "<<rcpt@probe.test>",
    "<rcpt..dots@probe.test>",
    "<.rcpt@probe.test>",
    "<rcpt@-probe.test>",
    "<rcpt@probe..test>",
    "<rcpt@probe_test.example>",
    "<rcpt@@probe.test>",
    "<rcpt@>",
    "<@probe.test>",
    "<rcpt@probe.test>SIZE=1",
    f"<{'a' * 65}@probe.test>",
    f"<rcpt@{'a' * 64}.test>",
    "<rcpt@xn--a.test>",
]


@pytest.fixture
def gw(tmp_path, sink: Sink, gateway_factory) -> GatewayThread:
    return gateway_factory(make_config(tmp_path, RELAY, port=sink.port))


def greeted(gw: GatewayThread) -> RawSession:
    session = RawSession(gw.port("dev"))
    assert session.reply().startswith("220")
    assert session.command("EHLO client.test").startswith("250")
    return session


@pytest.mark.parametrize("path", MALFORMED)
def test_a_malformed_recipient_is_refused_at_rcpt(gw: GatewayThread, path: str) -> None:
    with greeted(gw) as session:
        assert session.command("MAIL FROM:<a@example.com>").startswith("250")
        reply = session.command(f"RCPT TO:{path}")
        assert code(reply) == (553, "5.1.3"), reply
        assert code(session.command("DATA"))[0] == 503, "no recipient was accepted"


@pytest.mark.parametrize("path", [*MALFORMED, '<"probe'])
def test_a_malformed_sender_is_refused_at_mail(gw: GatewayThread, path: str) -> None:
    with greeted(gw) as session:
        reply = session.command(f"MAIL FROM:{path}")
        assert code(reply) == (553, "5.1.3"), reply
        assert code(session.command("RCPT TO:<b@example.org>"))[0] == 503


@pytest.mark.parametrize(
    "address",
    [
        '"quoted local"@example.org',
        '"a\\"b"@example.org',
        "user@[192.0.2.1]",
        "user@[IPv6:2001:db8::1]",
        "user+tag@sub.example.org",
        "üser@bücher.example",
        "user@xn--bcher-kva.example",
    ],
)
def test_unusual_but_valid_recipients_are_accepted_as_given(
    gw: GatewayThread, sink: Sink, address: str
) -> None:
    with greeted(gw) as session:
        assert session.command("MAIL FROM:<a@example.com> SMTPUTF8").startswith("250")
        reply = session.command(f"RCPT TO:<{address}>")
        if address.startswith('"quoted local"'):
            # Whitespace in an address never reaches a header or the next hop (501 5.1.3).
            assert code(reply) == (501, "5.1.3"), reply
            return
        assert code(reply) == (250, "2.1.5"), reply
        assert session.command("DATA").startswith("354")
        assert session.command(b"From: a@example.com\r\n\r\nhi\r\n.").startswith("250")
    wait_until(lambda: len(sink.messages) == 1, what="the message at the sink")
    local, _, domain = address.rpartition("@")
    # The relay may hand an internationalized domain on as its A-label.
    a_label = domain if domain.startswith("[") else idna.encode(domain, uts46=True).decode()
    assert sink.messages[0].rcpt_tos[0] in (address, f"{local}@{a_label}")


def test_a_source_route_is_accepted_and_dropped(gw: GatewayThread) -> None:
    with greeted(gw) as session:
        assert session.command("MAIL FROM:<@relay.example:a@example.com>").startswith("250")
        assert session.command("RCPT TO:<@x.example,@y.example:b@example.org>").startswith("250")
