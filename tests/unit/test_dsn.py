"""RFC 3464 delivery status notifications, read back with Python's own email parser."""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils

import msgspec
import pytest

from gateway.dsn import build_dsn
from gateway.message import Delivery, DeliveryStatus, Message

T0 = 1_800_000_000.0

ORIGINAL = (
    b"Received: from app.example.com ([127.0.0.1])\r\n\tby gw.test with ESMTP id m1;\r\n"
    b"\tWed, 15 Jan 2027 08:00:00 +0000\r\n"
    b"From: App <app@example.com>\r\nTo: <user@example.org>\r\nSubject: Order 42\r\n"
    b"Message-ID: <order-42@example.com>\r\n\r\nThe body is not repeated in a DSN.\r\n"
)


class Report(msgspec.Struct):
    """A parsed DSN: the whole message and its three parts."""

    message: email.message.EmailMessage
    human: email.message.EmailMessage
    per_message: email.message.Message
    per_recipient: list[email.message.Message]
    headers: email.message.EmailMessage


def parse_report(raw: bytes) -> Report:
    """Parse ``raw`` as ``multipart/report; report-type=delivery-status``, checking its shape."""
    crlf = raw.count(b"\r\n")
    assert crlf and raw.count(b"\n") == crlf and raw.count(b"\r") == crlf, "CRLF line ends only"
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    assert not msg.defects, msg.defects
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2, "per-message block, then recipients"
    return Report(msg, parts[0], blocks[0], blocks[1:], parts[2])  # type: ignore[arg-type]


def failed(recipient: str, status: DeliveryStatus, error: str, delivery_id: int = 1) -> Delivery:
    return Delivery(
        id=delivery_id,
        message_id="m1",
        recipient=recipient,
        status=status,
        last_error=error,
        updated_at=T0 + 60,
    )


def original(mail_from: str = "app@example.com", raw: bytes = ORIGINAL) -> Message:
    return Message(id="m1", tenant="default", mail_from=mail_from, raw=raw, created_at=T0)


def test_a_bounce_is_a_three_part_delivery_status_report() -> None:
    bounced = failed(
        "user@example.org", DeliveryStatus.BOUNCED, "550 5.1.1 <user@example.org>: no such user"
    )
    report = parse_report(build_dsn(original(), [bounced], reporting_mta="gw.test", now=T0 + 61))

    msg = report.message
    assert msg["To"].addresses[0].addr_spec == "app@example.com"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@gw.test"
    assert msg["Auto-Submitted"] == "auto-replied", "RFC 3834: no auto-replies to this"
    assert msg["Subject"] and msg["Message-ID"]
    assert email.utils.parsedate_to_datetime(msg["Date"]).timestamp() == T0 + 61

    text = report.human.get_content()
    assert "user@example.org" in text and "no such user" in text

    assert report.per_message["Reporting-MTA"] == "dns; gw.test"
    arrival = email.utils.parsedate_to_datetime(report.per_message["Arrival-Date"])
    assert arrival.timestamp() == T0
    (recipient,) = report.per_recipient
    assert recipient["Final-Recipient"] == "rfc822; user@example.org"
    assert recipient["Action"] == "failed"
    assert recipient["Status"] == "5.1.1", "the enhanced code from the remote reply"
    assert recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 <user@example.org>: no such user"
    last = email.utils.parsedate_to_datetime(recipient["Last-Attempt-Date"])
    assert last.timestamp() == T0 + 60

    returned = report.headers.get_content()
    assert "Message-ID: <order-42@example.com>" in returned
    assert "Subject: Order 42" in returned
    assert "The body is not repeated" not in returned


def test_an_expired_delivery_reports_5_4_7() -> None:
    expired = failed(
        "slow@example.net", DeliveryStatus.EXPIRED, "gave up after 4 attempt(s): 451 4.3.0 later"
    )
    report = parse_report(build_dsn(original(), [expired], reporting_mta="gw.test", now=T0))
    (recipient,) = report.per_recipient
    assert recipient["Status"] == "5.4.7"
    assert recipient["Action"] == "failed"
    assert "gave up after 4 attempt(s)" in recipient["Diagnostic-Code"]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("550 no enhanced code here", "5.0.0"),
        ("relay: address contains a forbidden character", "5.0.0"),
        ("554 5.7.1 rejected by policy", "5.7.1"),
        ("550 5.x.1 not a status code", "5.0.0"),
        ("", "5.0.0"),
        ("5.1.10 nullmx.test: the domain accepts no mail (null MX)", "5.1.10"),
    ],
)
def test_status_falls_back_to_5_0_0(error: str, status: str) -> None:
    bounced = failed("user@example.org", DeliveryStatus.BOUNCED, error)
    report = parse_report(build_dsn(original(), [bounced], reporting_mta="gw.test", now=T0))
    assert report.per_recipient[0]["Status"] == status


def test_several_recipients_get_one_block_each() -> None:
    deliveries = [
        failed("a@example.org", DeliveryStatus.BOUNCED, "550 5.1.1 unknown", 1),
        failed("b@example.net", DeliveryStatus.EXPIRED, "451 4.4.1 no answer", 2),
    ]
    report = parse_report(build_dsn(original(), deliveries, reporting_mta="gw.test", now=T0))
    assert [(r["Final-Recipient"], r["Status"]) for r in report.per_recipient] == [
        ("rfc822; a@example.org", "5.1.1"),
        ("rfc822; b@example.net", "5.4.7"),
    ]


def test_a_multiline_remote_reply_cannot_break_the_report() -> None:
    """aiosmtplib joins a multi-line reply with a bare LF; it must not reach the DSN as one."""
    reply = "550 5.1.1 first line\n5.1.1 second line\r\nInjected: header"
    bounced = failed("user@example.org", DeliveryStatus.BOUNCED, reply)
    raw = build_dsn(original(), [bounced], reporting_mta="gw.test", now=T0)
    report = parse_report(raw)  # asserts CRLF-only line ends
    (recipient,) = report.per_recipient
    assert recipient["Injected"] is None
    assert "second line" in recipient["Diagnostic-Code"]
    assert "second line" in report.human.get_content()


def test_a_message_without_a_body_still_returns_its_headers() -> None:
    headers_only = b"From: <app@example.com>\r\nSubject: no body\r\n"
    bounced = failed("user@example.org", DeliveryStatus.BOUNCED, "550 5.1.1 unknown")
    report = parse_report(
        build_dsn(original(raw=headers_only), [bounced], reporting_mta="gw.test", now=T0)
    )
    assert "Subject: no body" in report.headers.get_content()


def test_a_very_long_reply_is_cut_to_fit_a_header_line() -> None:
    bounced = failed("user@example.org", DeliveryStatus.BOUNCED, "550 5.7.1 " + "x" * 5000)
    raw = build_dsn(original(), [bounced], reporting_mta="gw.test", now=T0)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert parse_report(raw).per_recipient[0]["Status"] == "5.7.1"
