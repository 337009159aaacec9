"""Shared by the provider tests: a finished multipart message as the dispatcher hands it over."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from gateway.providers.base import OutboundMessage
from tests.providers.webhook_env import env  # noqa: F401  (a fixture for the webhook tests)

PDF = b"%PDF-1.4 not really a pdf\x00\x01\x02"


def finished_message() -> bytes:
    message = EmailMessage()
    message["From"] = "Shop Team <news@shop.example>"
    message["To"] = "ann@example.org, bob@example.org"
    message["Reply-To"] = "help@shop.example"
    message["Subject"] = "Your order ✓"
    message["Message-ID"] = "<order-42@shop.example>"
    message["List-Unsubscribe"] = "<https://t.shop.example/t/u/abc>"
    message["X-Campaign"] = "spring"
    message.set_content("Hello Ann,\nyour order shipped.\n")
    message.add_alternative("<p>Hello Ann, your order <b>shipped</b>.</p>", subtype="html")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="invoice.pdf")
    raw = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    return b"DKIM-Signature: v=1; a=rsa-sha256; d=shop.example; b=abc\r\n" + raw


@pytest.fixture
def outbound() -> OutboundMessage:
    return OutboundMessage(
        message_id="0193aaaabbbbccccdddd01",
        delivery_id=7,
        tenant="acme",
        mail_from="bounce@shop.example",
        recipient="ann@example.org",
        raw=finished_message(),
        tags=("orders", "shipping"),
        metadata={"order": "42", "gw_message_id": "spoofed"},
    )
