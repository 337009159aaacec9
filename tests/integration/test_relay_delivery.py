"""Submission → spool → smtp provider → a real sink, bytes intact."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from gateway.message import DeliveryStatus
from gateway.store.base import DeliveryFilter
from tests.conftest import RELAY_TO_SINK, GatewayThread, Sink, make_config, wait_until

RELAY = RELAY_TO_SINK

BODY = (
    b"From: App <app@example.com>\r\nTo: <user@example.org>\r\nSubject: Relay test\r\n"
    b"Message-ID: <fixed-id@example.com>\r\n\r\n"
    b"Line one\r\n.leading dot survives\r\n\xc3\xa9 8-bit body\r\n"
)


def test_message_arrives_byte_intact_at_the_sink(tmp_path, sink: Sink, gateway_factory) -> None:
    gw: GatewayThread = gateway_factory(make_config(tmp_path, RELAY, port=sink.port))
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail("app@example.com", ["user@example.org"], BODY)
    wait_until(lambda: len(sink.messages) == 1, what="the sink to receive the message")
    received = sink.messages[0]
    assert received.mail_from == "app@example.com"
    assert received.rcpt_tos == ["user@example.org"]
    assert received.data.endswith(BODY), "the gateway may only prepend headers"
    assert received.data.startswith(b"Received: from ")
    deliveries = gw.call(gw.gateway.store.list_deliveries(DeliveryFilter()))
    wait_until(
        lambda: (
            gw.call(gw.gateway.store.list_deliveries(DeliveryFilter()))[0].status
            is DeliveryStatus.DELIVERED
        ),
        what="the delivery to be recorded",
    )
    assert len(deliveries) == 1


def test_null_reverse_path_is_relayed_as_null(tmp_path, sink: Sink, gateway_factory) -> None:
    """``MAIL FROM:<>`` (bounces, auto-replies) reaches the next hop as ``<>``, not a literal."""
    gw: GatewayThread = gateway_factory(make_config(tmp_path, RELAY, port=sink.port))
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail("", ["user@example.org"], BODY)
    wait_until(lambda: len(sink.messages) == 1, what="the sink to receive the message")
    assert sink.messages[0].mail_from == "<>"
    message_id = gw.call(gw.gateway.store.list_deliveries(DeliveryFilter()))[0].message_id
    assert gw.call(gw.gateway.store.get_message(message_id)).mail_from == ""


@pytest.fixture
def plain_sink() -> Iterator[Sink]:
    """A sink that does not advertise PIPELINING. Request it before ``gateway_factory`` so the
    gateway (and its pooled sessions) is stopped first."""
    server = Sink(pipelining=False)
    server.start()
    yield server
    server.stop()


def test_a_next_hop_without_pipelining_gets_one_command_at_a_time(
    tmp_path, plain_sink: Sink, gateway_factory
) -> None:
    """The relay's classic path (no PIPELINING advertised) delivers the same bytes and still
    classifies a per-recipient 451."""
    plain = plain_sink
    gw: GatewayThread = gateway_factory(make_config(tmp_path, RELAY, port=plain.port))
    plain.script("later@example.org", "RCPT", ["451 4.3.0 try later"])
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail("app@example.com", ["user@example.org", "later@example.org"], BODY)
    wait_until(lambda: len(plain.messages) == 1, what="the sink to receive the message")
    assert plain.messages[0].data.endswith(BODY)
    expected = {
        "user@example.org": DeliveryStatus.DELIVERED,
        "later@example.org": DeliveryStatus.DEFERRED,
    }
    wait_until(
        lambda: (
            {
                d.recipient: d.status
                for d in gw.call(gw.gateway.store.list_deliveries(DeliveryFilter()))
            }
            == expected
        ),
        what="one delivered and one deferred delivery",
    )


def test_pipelined_relay_keeps_the_session_after_a_refusal(
    tmp_path, sink: Sink, gateway_factory
) -> None:
    """A 550 at RCPT inside a pipelined transaction is classified, the session is RSET and
    reused, and the next message goes through intact."""
    gw: GatewayThread = gateway_factory(make_config(tmp_path, RELAY, port=sink.port))
    sink.script("gone@example.org", "RCPT", ["550 5.1.1 no such user"])
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail("app@example.com", ["gone@example.org"], BODY)
        client.sendmail("app@example.com", ["user@example.org"], BODY)
    wait_until(lambda: len(sink.messages) == 1, what="the second message at the sink")
    assert sink.messages[0].rcpt_tos == ["user@example.org"]
    assert sink.messages[0].data.endswith(BODY)
    wait_until(
        lambda: (
            sorted(
                (d.recipient, d.status)
                for d in gw.call(gw.gateway.store.list_deliveries(DeliveryFilter()))
            )
            == [
                ("gone@example.org", DeliveryStatus.BOUNCED),
                ("user@example.org", DeliveryStatus.DELIVERED),
            ]
        ),
        what="one bounced and one delivered",
    )
