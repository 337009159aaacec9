"""Delivery Status Notifications (RFC 3464): the bounce message sent to the envelope sender."""

from __future__ import annotations

import email.utils
import os

from gateway.message import Delivery, DeliveryStatus, Message


def build_dsn(
    message: Message, failed: list[Delivery], *, reporting_mta: str, now: float
) -> bytes:
    """A ``multipart/report; report-type=delivery-status`` message for ``failed`` recipients."""
    boundary = f"dsn-{os.urandom(8).hex()}"
    original_headers = message.raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    date = email.utils.formatdate(now, localtime=False)
    arrival = email.utils.formatdate(message.created_at, localtime=False)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{message.mail_from}>",
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
        lines.append(f"  <{d.recipient}>: {d.last_error or d.status.value}")
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
        lines += ["", f"Final-Recipient: rfc822; {d.recipient}", "Action: failed", f"Status: {status}"]
        if diagnostic:
            lines.append(f"Diagnostic-Code: smtp; {diagnostic}")
        lines.append(f"Last-Attempt-Date: {email.utils.formatdate(d.updated_at or now)}")
    lines += ["", f"--{boundary}", "Content-Type: text/rfc822-headers", ""]
    body = "\r\n".join(lines).encode("utf-8") + b"\r\n" + original_headers
    return body + f"\r\n--{boundary}--\r\n".encode()


def _status_of(delivery: Delivery) -> tuple[str, str]:
    """RFC 3464 ``Status`` (always 5.x.x, the action is "failed") and ``Diagnostic-Code``."""
    error = delivery.last_error.replace("\r", " ").replace("\n", " ")
    if delivery.status is DeliveryStatus.EXPIRED:
        return "5.4.7", error  # RFC 3463: delivery time expired
    parts = error.split(maxsplit=2)
    if len(parts) > 1 and parts[1].startswith("5.") and parts[1].count(".") == 2:
        return parts[1], error
    return "5.0.0", error
