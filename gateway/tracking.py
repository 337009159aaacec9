"""What the tracking plugins (click_tracking, open_pixel, list_unsubscribe) share.

* :class:`Tracker` — the ``[tracking]`` section made usable: the token signer (keys parsed
  once), the base URL of ``/t/...`` links and the token lifetime. One per gateway, kept in
  ``gateway.plugin_state["tracking"]`` and built by whichever plugin is configured first.
* :func:`text_parts` — a small MIME scanner that finds the ``text/html`` and ``text/plain``
  body parts of a message by byte offsets, without building an ``email`` object tree: the
  open pixel has to find the HTML part again for every recipient (the click tracker has
  already made each recipient's bytes different), so this must cost microseconds.
* :func:`decode_body` / :func:`encode_body` — the part's transfer encoding (quoted-printable,
  base64, or none) undone and redone with :mod:`binascii` (C code).
* :func:`message_meta` — the HTTP API's per-message ``tracking`` switches and ``tags``, looked
  up once per message and cached (SMTP mail has none, and costs nothing).
* :func:`publish_tracked` — how an open, click or unsubscribe becomes an event: through
  :func:`gateway.events.publish`, like every other event, never written to the store directly.

HTML is handled as bytes. That is exact for every ASCII-compatible charset (UTF-8, Latin-n,
Windows-125x …), which is what mail uses; a part in UTF-16 or UTF-32 is left alone.
"""

from __future__ import annotations

import base64
import binascii
import collections
import re
from typing import Any, NamedTuple

from gateway.config import ConfigError
from gateway.events import DEFAULT_STREAM, Event, EventKind, publish
from gateway.message import Delivery, Message
from gateway.store.base import MessageMeta
from gateway.streams import TRANSACTIONAL, settings_of
from gateway.tokens import Kind, TokenPayload, TokenSigner, kind_code

STATE_KEY = "tracking"
_META_CACHE_SIZE = 1024

SCANNER_AGENTS = re.compile(
    r"python-requests|python-urllib|aiohttp|httpx|curl/|wget/|go-http-client|java/|okhttp"
    r"|barracuda|mimecast|proofpoint|symantec|trend ?micro|forcepoint|zscaler|cisco|ironport"
    r"|safelinks|\bbot\b|crawler|spider|scanner|headless",
    re.I,
)
"""User agents of HTTP libraries and mail-security products (open and click classification)."""


class Tracker:
    """Signs and verifies the tokens of one gateway and builds ``/t/...`` URLs."""

    def __init__(self, gateway: Any, plugin: str) -> None:
        tracking = gateway.config.tracking
        if not tracking.base_url:
            raise ConfigError(f"tracking.base_url: required by plugins.{plugin}")
        if not tracking.keys:
            raise ConfigError(f"tracking.keys: plugins.{plugin} needs at least one signing key")
        self.base_url = tracking.base_url.rstrip("/")
        self.signer = TokenSigner(tracking.keys, tracking.signing_key_id)
        self.lifetime = tracking.token_lifetime_seconds
        self.clock = gateway.clock
        self._meta: collections.OrderedDict[str, MessageMeta | None] = collections.OrderedDict()

    @classmethod
    def of(cls, gateway: Any, plugin: str) -> Tracker:
        """The gateway's tracker, made on first use (from ``gateway_configure``)."""
        tracker = gateway.plugin_state.get(STATE_KEY)
        if not isinstance(tracker, Tracker):
            tracker = cls(gateway, plugin)
            gateway.plugin_state[STATE_KEY] = tracker
        return tracker

    def payload(
        self, kind: Kind, message: Message, delivery: Delivery, **fields: Any
    ) -> TokenPayload:
        now = self.clock.now()
        return TokenPayload(
            kind=kind_code(kind),
            message_id=message.id,
            delivery_id=delivery.id,
            tenant=message.tenant,
            issued_at=int(now),
            expires_at=int(now + self.lifetime) if self.lifetime else 0,
            stream="" if message.stream == TRANSACTIONAL else message.stream,
            **fields,
        )

    def url(self, path: str, payload: TokenPayload, suffix: str = "") -> str:
        return f"{self.base_url}/t/{path}/{self.signer.sign(payload)}{suffix}"

    def verify(self, token: str, kind: Kind) -> TokenPayload:
        return self.signer.verify(token, kind=kind, now=self.clock.now())

    async def meta(self, gateway: Any, message: Message) -> MessageMeta | None:
        """The HTTP API's metadata of ``message`` (``None`` for SMTP mail), cached."""
        if message.source != "http":
            return None
        if message.id in self._meta:
            self._meta.move_to_end(message.id)
            return self._meta[message.id]
        record = await gateway.store.message_record(message.tenant, message.id)
        meta = record.meta if record is not None else None
        self._meta[message.id] = meta
        if len(self._meta) > _META_CACHE_SIZE:
            self._meta.popitem(last=False)
        return meta


async def publish_tracked(
    gateway: Any,
    tracker: Tracker,
    kind: EventKind,
    payload: TokenPayload,
    *,
    detail: str = "",
    url: str = "",
    classification: str = "",
    signals: tuple[str, ...] = (),
) -> Event:
    """Publish what a tracking link saw, with what the token and the stored message tell:
    tenant, stream, recipient, sending domain, tags and metadata."""
    message: Message | None = await gateway.store.get_message(payload.message_id)  # None: purged
    meta = await tracker.meta(gateway, message) if message is not None else None
    sender = message.mail_from.rpartition("@")[2].lower() if message is not None else ""
    event = Event(
        type=kind,
        tenant=payload.tenant,
        recipient=await recipient_of(gateway, payload),
        at=gateway.clock.now(),
        message_id=payload.message_id,
        delivery_id=payload.delivery_id,
        stream=payload.stream or DEFAULT_STREAM,
        sending_domain=sender,
        detail=detail,
        url=url,
        classification=classification,
        signals=signals,
        tags=meta.tags if meta is not None else (),
        metadata=dict(meta.metadata) if meta is not None else {},
    )
    await publish(gateway, event)
    return event


async def switched_off(tracker: Tracker, gateway: Any, message: Message, switch: str) -> bool:
    """True when an HTTP API sender turned ``switch`` (``opens``/``clicks``) off for this
    message (``"tracking": {"clicks": false}``), or else the message's stream does not track
    it (``[tenants.<t>.streams.<s>] tracking``)."""
    meta = await tracker.meta(gateway, message)
    chosen = meta.tracking.get(switch) if meta is not None else None
    if chosen is not None:
        return not chosen
    stream = settings_of(gateway.config, message.tenant, message.stream)
    return not bool(getattr(stream.tracking, switch))


# --- finding body parts by offset -------------------------------------------------------------


class Part(NamedTuple):
    """A leaf body part: ``raw[header_start:body_start]`` is its header block (with the blank
    line), ``raw[body_start:body_end]`` its encoded body."""

    header_start: int
    body_start: int
    body_end: int
    content_type: bytes
    encoding: bytes
    charset: bytes


_UNFOLD = re.compile(rb"\r\n[ \t]+")
_BOUNDARY = re.compile(rb';\s*boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))', re.I)
_CHARSET = re.compile(rb';\s*charset\s*=\s*(?:"([^"]+)"|([^\s;]+))', re.I)
_MAX_DEPTH = 12
_UNSAFE_CHARSETS = (b"utf-16", b"utf-32", b"ucs-2", b"ucs-4", b"utf-7")


def headers_of(block: bytes) -> dict[bytes, bytes]:
    """First value of each header (lower-cased names), unfolded."""
    out: dict[bytes, bytes] = {}
    for line in _UNFOLD.sub(b" ", block).split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            out.setdefault(name.strip().lower(), value.strip())
    return out


def text_parts(raw: bytes) -> list[Part]:
    """The inline ``text/*`` leaf parts of ``raw`` in document order (attachments, nested
    messages and parts in charsets that are not ASCII-compatible are not included)."""
    out: list[Part] = []
    _walk(raw, 0, len(raw), out, 0)
    return out


def _walk(raw: bytes, start: int, end: int, out: list[Part], depth: int) -> None:
    if raw.startswith(b"\r\n", start):  # a part with no header lines
        header_end = body_start = start + 2
    else:
        blank = raw.find(b"\r\n\r\n", start, end)
        if blank < 0:
            return
        header_end, body_start = blank + 2, blank + 4
    headers = headers_of(raw[start:header_end])
    content_type = headers.get(b"content-type", b"text/plain")
    kind = content_type.partition(b";")[0].strip().lower()
    if kind.startswith(b"multipart/"):
        if depth < _MAX_DEPTH:
            found = _BOUNDARY.search(content_type)
            if found:
                boundary = found.group(1) or found.group(2)
                for part_start, part_end in _split(raw, body_start, end, boundary):
                    _walk(raw, part_start, part_end, out, depth + 1)
        return
    if kind not in (b"text/html", b"text/plain"):
        return
    if headers.get(b"content-disposition", b"").lower().startswith(b"attachment"):
        return
    found = _CHARSET.search(content_type)
    charset = (found.group(1) or found.group(2)).lower() if found else b"us-ascii"
    if charset.startswith(_UNSAFE_CHARSETS):
        return
    encoding = headers.get(b"content-transfer-encoding", b"7bit").lower()
    out.append(Part(start, body_start, end, kind, encoding, charset))


def _split(raw: bytes, body_start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of each part between ``--boundary`` lines; the CRLF before a delimiter
    belongs to the delimiter (RFC 2046 5.1.1)."""
    delimiter = b"\r\n--" + boundary
    parts: list[tuple[int, int]] = []
    current = -1
    at = body_start - 2  # the header block's last CRLF may precede the first delimiter
    while True:
        at = raw.find(delimiter, at, end)
        if at < 0:
            return parts  # no close delimiter: what was found so far
        after = at + len(delimiter)
        if after < end and raw[after : after + 1] not in (b"-", b"\r", b" ", b"\t"):
            at = after  # a longer boundary that merely starts with ours
            continue
        if current >= 0:
            parts.append((current, at))
        if raw.startswith(b"--", after):
            return parts
        line_end = raw.find(b"\r\n", after, end)
        if line_end < 0:
            return parts
        current = line_end + 2
        at = line_end


# --- transfer encodings -----------------------------------------------------------------------

PLAIN_ENCODINGS = (b"7bit", b"8bit", b"binary")


def decode_body(body: bytes, encoding: bytes) -> bytes | None:
    """The part's content; ``None`` for an encoding we do not rewrite."""
    if encoding in PLAIN_ENCODINGS:
        return body
    if encoding == b"quoted-printable":
        return binascii.a2b_qp(body)
    if encoding == b"base64":
        try:
            return binascii.a2b_base64(body)
        except binascii.Error:
            return None
    return None


def encode_body(content: bytes, encoding: bytes) -> bytes:
    """Encode ``content`` again, in lines short enough for SMTP (76 characters)."""
    if encoding in PLAIN_ENCODINGS:
        return content
    if encoding == b"quoted-printable":
        return binascii.b2a_qp(content, istext=True)
    return base64.encodebytes(content).replace(b"\n", b"\r\n")


SOFT_BREAK = b"=\r\n"


def qp_segment(text: bytes) -> bytes:
    """``text`` — ASCII without ``=``, spaces or line breaks, such as a tracking URL — as
    quoted-printable lines that start and end at soft breaks, so it can be spliced between
    independently encoded pieces: the decoded result is the plain concatenation."""
    return SOFT_BREAK.join([text[i : i + 75] for i in range(0, len(text), 75)])


def longest_line(content: bytes) -> int:
    return max(map(len, content.split(b"\r\n")), default=0)


SMTP_LINE_LIMIT = 998


def with_encoding(header_block: bytes, encoding: bytes) -> bytes:
    """A part's header block (ending in the blank line) with its Content-Transfer-Encoding
    set to ``encoding``; every other line is kept byte for byte."""
    lines = header_block[:-2].split(b"\r\n")  # the last item is "" (the blank line follows)
    kept: list[bytes] = []
    skipping = False
    for line in lines[:-1]:
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = line.lower().startswith(b"content-transfer-encoding:")
        if not skipping:
            kept.append(line)
    kept.append(b"Content-Transfer-Encoding: " + encoding)
    return b"".join(line + b"\r\n" for line in kept) + b"\r\n"


# --- the endpoints' side ------------------------------------------------------------------------


REFUSAL_STATUS: dict[str, int] = {
    "malformed": 400,
    "truncated": 400,
    "unsupported-version": 400,
    "unknown-key": 404,
    "bad-signature": 404,
    "wrong-kind": 404,
    "expired": 404,
}
"""How a refused token is answered: 400 when it cannot be read, 404 when it is not ours (or
no longer is). Never a redirect, never anything copied from the token."""


async def recipient_of(gateway: Any, payload: TokenPayload) -> str:
    """The address a click/open token was made for ("" once the message is purged)."""
    from gateway.store.base import DeliveryFilter

    if payload.recipient:
        return payload.recipient
    deliveries = await gateway.store.list_deliveries(
        DeliveryFilter(message_id=payload.message_id, limit=10_000)
    )
    for delivery in deliveries:
        if delivery.id == payload.delivery_id:
            return str(delivery.recipient)
    return ""
