"""Delivery Status Notifications (RFC 3464): the bounce message sent to the envelope sender.

Every value that comes from outside (addresses, the next hop's reply text) is flattened to one
line before it is written: a multi-line SMTP reply reaches us joined with bare LFs, which would
otherwise end a header early or put bare LFs into the report.
"""

from __future__ import annotations

import os
import re

from gateway.clock import rfc5322_date
from gateway.message import Delivery, DeliveryStatus, Message


def build_dsn(message: Message, failed: list[Delivery], *, reporting_mta: str, now: float) -> bytes:
    """A ``multipart/report; report-type=delivery-status`` message for ``failed`` recipients."""
    boundary = f"dsn-{os.urandom(8).hex()}"
    original_headers = message.raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    date = rfc5322_date(now)
    arrival = rfc5322_date(message.created_at)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{_one_line(message.mail_from)}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <dsn.{message.id}.{os.urandom(4).hex()}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is the mail gateway at {reporting_mta}.",
        "",
        "Your message could not be delivered to the following recipients:",
        "",
    ]
    for d in failed:
        reason = _one_line(d.last_error)[:_MAX_DIAGNOSTIC] or d.status.value
        lines.append(f"  <{_one_line(d.recipient)}>: {reason}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Gateway-Message-ID: {message.id}",
        f"Arrival-Date: {arrival}",
    ]
    for d in failed:
        status, diagnostic = _status_of(d)
        lines += [
            "",
            f"Final-Recipient: rfc822; {_one_line(d.recipient)}",
            "Action: failed",
            f"Status: {status}",
        ]
        if diagnostic:
            lines.append(f"Diagnostic-Code: smtp; {diagnostic}")
        lines.append(f"Last-Attempt-Date: {rfc5322_date(d.updated_at or now)}")
    lines += ["", f"--{boundary}", "Content-Type: text/rfc822-headers", ""]
    body = "\r\n".join(lines).encode("utf-8") + b"\r\n" + original_headers
    return body + f"\r\n--{boundary}--\r\n".encode()


def _status_of(delivery: Delivery) -> tuple[str, str]:
    """RFC 3464 ``Status`` (always 5.x.x, the action is "failed") and ``Diagnostic-Code``."""
    error = _one_line(delivery.last_error)[:_MAX_DIAGNOSTIC]
    if delivery.status is DeliveryStatus.EXPIRED:
        return "5.4.7", error  # RFC 3463: delivery time expired
    parts = error.split(maxsplit=2)
    if len(parts) > 1 and _PERMANENT_STATUS.fullmatch(parts[1]):
        return parts[1], error  # "550 5.1.1 …", a next hop's reply
    if parts and _PERMANENT_STATUS.fullmatch(parts[0]):
        return parts[0], error  # "5.1.10 …", the gateway's own finding (null MX)
    return "5.0.0", error


_PERMANENT_STATUS = re.compile(r"5\.\d{1,3}\.\d{1,3}")
_MAX_DIAGNOSTIC = 900
"""Characters of the next hop's reply kept: a header line must stay under 998 (RFC 5322)."""


def _one_line(text: str) -> str:
    """``text`` with CR, LF and NUL replaced by spaces, safe inside one header or text line."""
    return text.replace("\r\n", " ").translate(_LINE_BREAKS)


_LINE_BREAKS = str.maketrans({"\r": " ", "\n": " ", "\x00": " "})
