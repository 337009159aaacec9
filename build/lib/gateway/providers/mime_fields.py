"""A finished MIME message taken apart into the fields of a JSON send API (SendGrid,
Postmark), for APIs that do not take raw MIME.

Such an API rebuilds the message itself, so the gateway's own DKIM signature cannot survive
(it is dropped; the provider signs with the domain authentication set up there), and the
visible ``To`` becomes this delivery's recipient: every envelope recipient is its own
delivery, so copying ``Cc`` would deliver twice.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
from email.headerregistry import Address
from email.message import EmailMessage, Message

import msgspec

PARSE_IN_THREAD_ABOVE = 64 * 1024
"""Bytes; larger messages are parsed off the event loop."""

REBUILT_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "reply-to",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "received",
        "return-path",
        "dkim-signature",
        "x-sg-id",
        "x-sg-eid",
    }
)
"""Headers the API writes itself (or that a rebuilt message must not carry)."""


class MimeProblem(ValueError):
    """The message cannot be expressed in the API's fields (no From, no body …)."""


class Attachment(msgspec.Struct, kw_only=True, frozen=True):
    filename: str
    content_type: str
    content: bytes
    content_id: str = ""
    """For inline parts (``cid:`` references from HTML)."""
    inline: bool = False

    @property
    def content_base64(self) -> str:
        return base64.b64encode(self.content).decode("ascii")


class MimeFields(msgspec.Struct, kw_only=True, frozen=True):
    from_address: str
    from_name: str = ""
    reply_to: str = ""
    subject: str = ""
    text: str | None = None
    html: str | None = None
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    """Headers to pass through, in order (Message-ID, List-Unsubscribe, X-… …)."""
    attachments: list[Attachment] = msgspec.field(default_factory=list)


async def mime_fields(raw: bytes) -> MimeFields:
    """:func:`parse_fields`, off the event loop for large messages."""
    if len(raw) > PARSE_IN_THREAD_ABOVE:
        return await asyncio.to_thread(parse_fields, raw)
    return parse_fields(raw)


def parse_fields(raw: bytes) -> MimeFields:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    sender = _first_address(parsed, "From")
    if sender is None:
        raise MimeProblem("the message has no usable From address")
    reply = _first_address(parsed, "Reply-To")
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = []
    for part in parsed.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        if disposition is None and ctype == "text/plain" and text is None:
            text = _text_of(part)
        elif disposition is None and ctype == "text/html" and html is None:
            html = _text_of(part)
        else:
            attachments.append(_attachment_of(part, len(attachments)))
    if text is None and html is None:
        raise MimeProblem("the message has no text/plain or text/html body")
    headers = [
        (name, str(value)) for name, value in parsed.items() if name.lower() not in REBUILT_HEADERS
    ]
    return MimeFields(
        from_address=sender.addr_spec,
        from_name=sender.display_name,
        reply_to=reply.addr_spec if reply is not None else "",
        subject=str(parsed.get("Subject", "")),
        text=text,
        html=html,
        headers=headers,
        attachments=attachments,
    )


def _first_address(parsed: EmailMessage, header: str) -> Address | None:
    value = parsed.get(header)
    if value is None:
        return None
    try:
        addresses = value.addresses
    except AttributeError:
        return None
    return addresses[0] if addresses and addresses[0].addr_spec not in ("", "<>") else None


def _text_of(part: Message) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:  # an unknown charset name
        return payload.decode("utf-8", "replace")


def _attachment_of(part: Message, index: int) -> Attachment:
    payload = part.get_payload(decode=True)
    content = payload if isinstance(payload, bytes) else b""
    content_id = str(part.get("Content-ID", "")).strip().strip("<>")
    return Attachment(
        filename=part.get_filename() or f"part-{index + 1}",
        content_type=part.get_content_type(),
        content=content,
        content_id=content_id,
        inline=part.get_content_disposition() == "inline" or bool(content_id),
    )
