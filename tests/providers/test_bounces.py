"""VERP return paths and the bounce listener: mail relayed to a real sink carries a signed
return path; a DSN (RFC 3464) and an ARF report (RFC 5965) sent with smtplib to the bounce
listener suppress the right recipient; forged return paths are refused."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.config import BouncesSection
from gateway.message import DeliveryStatus
from gateway.store.base import DeliveryFilter
from gateway.verp import VerpError, VerpSigner
from tests.conftest import RELAY_TO_SINK, GatewayThread, Sink, make_config

KEY_1 = "k" * 40
KEY_2 = "q" * 40

BOUNCES = """
[bounces]
domain = "bounce.shop.test"
keys = {{ b1 = "{key}" }}
port = 0
"""


def signer(**overrides: object) -> VerpSigner:
    settings = {"domain": "bounce.shop.test", "keys": {"b1": KEY_1}, **overrides}
    return VerpSigner(BouncesSection(**settings))  # type: ignore[arg-type]


def test_a_return_path_names_its_delivery_and_survives_case_folding() -> None:
    verp = signer()
    address = verp.address("0193aaaabbbbccccdddd01", 42)
    assert address.startswith("bounces+0193aaaabbbbccccdddd01.42.b1.")
    assert address.endswith("@bounce.shop.test")
    assert len(address.partition("@")[0]) <= 64
    path = verp.parse(address.upper())
    assert (path.message_id, path.delivery_id) == ("0193aaaabbbbccccdddd01", 42)


def test_altered_or_foreign_return_paths_are_refused() -> None:
    verp = signer()
    address = verp.address("0193aaaabbbbccccdddd01", 42)
    with pytest.raises(VerpError, match="does not match"):
        verp.parse(address.replace(".42.", ".43."))
    with pytest.raises(VerpError, match="unknown key"):
        verp.parse(address.replace(".b1.", ".b9."))
    with pytest.raises(VerpError, match="bounce domain"):
        verp.parse(address.replace("bounce.shop.test", "elsewhere.test"))
    with pytest.raises(VerpError, match="malformed"):
        verp.parse("bounces+nonsense@bounce.shop.test")
    other = signer(keys={"b1": KEY_2})
    with pytest.raises(VerpError, match="does not match"):
        other.parse(address)


def test_keys_rotate_without_refusing_earlier_return_paths() -> None:
    old = signer().address("0193aaaabbbbccccdddd01", 1)
    rotated = signer(keys={"b1": KEY_1, "b2": KEY_2}, signing_key="b2")
    assert ".b2." in rotated.address("0193aaaabbbbccccdddd01", 1)
    assert rotated.parse(old).delivery_id == 1


def dsn(to: str, recipient: str, status: str, action: str = "failed") -> bytes:
    report = EmailMessage()
    report["From"] = "MAILER-DAEMON@mx.example.org"
    report["To"] = to
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Message-ID"] = f"<dsn-{status}-{recipient}-{action}@mx.example.org>"
    report.set_content("I'm sorry to have to inform you that your message could not be delivered.")
    report.make_mixed()
    raw = report.as_bytes().replace(
        b"multipart/mixed", b"multipart/report; report-type=delivery-status", 1
    )
    boundary = report.get_boundary()
    assert boundary is not None
    status_part = (
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n"
        "Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; {status[0]}50 {status} mailbox problem\r\n"
    )
    headers_part = (
        "Content-Type: text/rfc822-headers\r\n\r\nFrom: app@shop.test\r\nSubject: News\r\n"
    )
    closing = f"--{boundary}--".encode()
    extra = f"--{boundary}\r\n{status_part}\r\n--{boundary}\r\n{headers_part}\r\n".encode()
    return raw.replace(closing, extra + closing).replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")


def arf(to: str, return_path: str) -> bytes:
    boundary = "arf-boundary"
    return (
        f"From: fbl@isp.example\r\nTo: {to}\r\nSubject: Abuse report\r\n"
        f"Message-ID: <arf-1@isp.example>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"\r\n'
        f"\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\nA complaint about a message.\r\n"
        f"--{boundary}\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nUser-Agent: ISP-FBL/1.0\r\nVersion: 1\r\n"
        f"Original-Mail-From: <{return_path}>\r\n"
        f"\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n"
        f"Return-Path: <{return_path}>\r\nFrom: app@shop.test\r\nSubject: News\r\n\r\nHello\r\n"
        f"\r\n--{boundary}--\r\n"
    ).encode()


class Bounces:
    def __init__(self, tmp_path: Path, sink: Sink, factory: Callable[..., GatewayThread]) -> None:
        config = make_config(tmp_path, RELAY_TO_SINK + BOUNCES, port=sink.port, key=KEY_1)
        self.gw = factory(config, clock=FakeClock(), deliver=False)
        self.sink = sink
        port = self.gw.gateway.bounce_port
        assert port is not None
        self.port = port

    def send(self, *recipients: str) -> str:
        with smtplib.SMTP("127.0.0.1", self.gw.port("dev"), timeout=20) as smtp:
            smtp.sendmail(
                "app@shop.test",
                list(recipients),
                b"From: app@shop.test\r\nSubject: News\r\n\r\nHello\r\n",
            )
        self.gw.call(self.gw.gateway.dispatcher.run_once())
        [delivery, *_] = self.deliveries()
        return delivery.message_id

    def deliveries(self) -> list:  # type: ignore[type-arg]
        return self.gw.call(self.gw.gateway.store.list_deliveries(DeliveryFilter()))

    def suppressions(self) -> dict[str, str]:
        entries = self.gw.call(self.gw.gateway.store.list_suppressions("default"))
        return {e.address: e.reason for e in entries}

    def report(self, to: str, raw: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as smtp:
            smtp.sendmail("", [to], raw)


@pytest.fixture
def bounces(tmp_path: Path, sink: Sink, gateway_factory: Callable[..., GatewayThread]) -> Bounces:
    return Bounces(tmp_path, sink, gateway_factory)


def test_relayed_mail_carries_a_signed_return_path_per_delivery(bounces: Bounces) -> None:
    message_id = bounces.send("ann@example.org", "bob@example.org")
    by_recipient = {r.rcpt_tos[0]: r.mail_from for r in bounces.sink.messages}
    verp = signer()
    for delivery in bounces.deliveries():
        path = verp.parse(by_recipient[delivery.recipient])
        assert (path.message_id, path.delivery_id) == (message_id, delivery.id)


def test_a_dsn_and_an_arf_report_suppress_the_right_recipients(bounces: Bounces) -> None:
    bounces.send("ann@example.org", "bob@example.org", "cy@example.org")
    return_paths = {r.rcpt_tos[0]: r.mail_from for r in bounces.sink.messages}
    ann_path = return_paths["ann@example.org"]
    # a forwarding chain may rename the recipient: the delivery's own address is suppressed
    bounces.report(ann_path, dsn(ann_path, "ann.forwarded@example.net", "5.1.1"))
    bob_path = return_paths["bob@example.org"]
    bounces.report("fbl@bounce.shop.test", arf("fbl@bounce.shop.test", bob_path))
    assert bounces.suppressions() == {"ann@example.org": "bounce", "bob@example.org": "complaint"}
    states = {d.recipient: d.status for d in bounces.deliveries()}
    assert states == {
        "ann@example.org": DeliveryStatus.BOUNCED,
        "bob@example.org": DeliveryStatus.DELIVERED,
        "cy@example.org": DeliveryStatus.DELIVERED,
    }
    # the same DSN again (a retrying MTA) counts once
    bounces.report(ann_path, dsn(ann_path, "ann.forwarded@example.net", "5.1.1"))
    message_id = bounces.deliveries()[0].message_id
    timeline = bounces.gw.call(bounces.gw.gateway.store.timeline(message_id))
    assert [(e.type, e.recipient) for e in timeline].count(("bounced", "ann@example.org")) == 1


def test_temporary_failures_and_delays_do_not_suppress_at_once(bounces: Bounces) -> None:
    bounces.send("ann@example.org")
    [received] = bounces.sink.messages
    path = received.mail_from
    bounces.report(path, dsn(path, "ann@example.org", "4.2.2"))
    bounces.report(path, dsn(path, "ann@example.org", "4.4.1", action="delayed"))
    assert bounces.suppressions() == {}
    assert bounces.deliveries()[0].status == DeliveryStatus.DELIVERED


def test_forged_return_paths_and_relaying_are_refused(bounces: Bounces) -> None:
    bounces.send("ann@example.org")
    [received] = bounces.sink.messages
    forged = received.mail_from.replace("@", "x@", 1)
    for address in (forged, "bounces+0193.1.b1.aaaa@bounce.shop.test", "ann@elsewhere.test"):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            bounces.report(address, dsn(address, "ann@example.org", "5.1.1"))
        [(code, text)] = refused.value.recipients.values()
        assert code == 550 and text.startswith(b"5.7.1"), text
    # an auto-reply (not a report) to a valid return path is taken and ignored
    bounces.report(
        received.mail_from, b"From: ann@example.org\r\nSubject: Out of office\r\n\r\nAway\r\n"
    )
    assert bounces.suppressions() == {}


def test_only_smtp_and_mx_routes_get_return_paths(tmp_path: Path) -> None:
    from gateway.verp import verp_routes

    config = make_config(
        tmp_path,
        """
[providers.relay]
type = "smtp"
host = "127.0.0.1"
[providers.pm]
type = "postmark"
server_token = "t"
""",
    )
    # ("mx" sections count too, by their type tag, once that provider type is configurable)
    assert verp_routes(config) == {"relay"}
    assert VerpSigner.from_config(config) is None  # no [bounces] domain: VERP off
