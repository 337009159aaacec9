"""JSON fields → checked values → an RFC 5322 message (written by :mod:`gateway.api.compose`);
nothing unchecked reaches a header.

Every value that ends up in a header (names, subject, custom headers, file names, content ids)
is refused if it holds CR, LF or another control character: that is header injection, and we
answer it with a problem naming the field rather than repairing it. Bodies are encoded 7-bit
clean (quoted-printable or base64 as needed), with CRLF line ends, so any relay takes them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

import msgspec

from gateway.api.compose import compose
from gateway.api.problems import Problem
from gateway.ingress import content_problem

# Quoted local parts and comments are legal but are where parsers disagree; applications do
# not need them, so they are refused.
_LOCAL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]{1,64}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
"""C0 (but tab), DEL, C1 (U+0085 NEL among them) and the Unicode line and paragraph separators:
any of them can end a header line for some parser."""
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MIME_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}$")
_CONTENT_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,200}$")

RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "sender",
        "received",
        "return-path",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "dkim-signature",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
        "authentication-results",
    }
)
"""Set from fields of the request (or by the gateway), so a ``headers`` entry may not."""


class Mailbox(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An address with an optional display name; a bare string means the address alone."""

    email: str
    name: str = ""


Recipient = str | Mailbox


class Attachment(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    filename: str
    content: str
    """The file, base64-encoded (standard alphabet, padding required)."""
    content_type: str = "application/octet-stream"
    content_id: str | None = None
    """Set it to embed the file in the HTML (``<img src="cid:...">``): it becomes inline."""


class CheckedAddress(msgspec.Struct, frozen=True):
    email: str
    """As it goes on the envelope: domain in IDNA (ASCII) form."""
    name: str
    utf8: bool
    """The local part is not ASCII, so the next hop must support SMTPUTF8."""


def check_header_text(value: str, field: str, *, max_length: int = 998) -> str:
    """``value`` if it is safe inside a header; else a problem naming ``field``."""
    match = _CONTROL.search(value)
    if match is not None:
        what = {"\r": "a carriage return", "\n": "a line feed", "\x00": "a NUL byte"}.get(
            match.group(), "a control character"
        )
        raise Problem.invalid(field, f"contains {what}; header values must be one line")
    if len(value) > max_length:
        raise Problem.invalid(field, f"is longer than {max_length} characters")
    return value


def check_address(value: Recipient, field: str) -> CheckedAddress:
    """A deliverable ``local@domain``; names are checked like any header text."""
    if isinstance(value, Mailbox):
        address, name = value.email, check_header_text(value.name, f"{field}.name", max_length=200)
        field = f"{field}.email"
    else:
        address, name = value, ""
    address = address.strip()
    if _CONTROL.search(address) or " " in address or "\t" in address:
        raise Problem.invalid(field, "an address may not contain spaces or control characters")
    local, at, domain = address.rpartition("@")
    if (
        not at
        or not _LOCAL.match(local)
        or local.startswith(".")
        or local.endswith(".")
        or (".." in local)
    ):
        raise Problem.invalid(field, f"{address!r} is not an email address (local@domain)")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise Problem.invalid(field, f"{domain!r} is not a valid domain") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or len(ascii_domain) > 253 or not all(_LABEL.match(x) for x in labels):
        raise Problem.invalid(field, f"{domain!r} is not a valid domain")
    checked = f"{local}@{ascii_domain}"
    if len(checked) > 254:
        raise Problem.invalid(field, "an address may be at most 254 characters")
    return CheckedAddress(email=checked, name=name, utf8=not local.isascii())


def check_headers(headers: dict[str, str], field: str = "headers") -> list[tuple[str, str]]:
    checked = []
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise Problem.invalid(
                f"{field}.{name}", "a header name is 1-76 printable ASCII characters, no colon"
            )
        if name.lower() in RESERVED_HEADERS:
            raise Problem.invalid(
                f"{field}.{name}", f"{name} is set by the gateway or from its own field"
            )
        checked.append((name, check_header_text(value, f"{field}.{name}")))
    return checked


class DecodedAttachment(msgspec.Struct, frozen=True):
    filename: str
    data: bytes
    maintype: str
    subtype: str
    content_id: str | None


def check_attachments(attachments: Sequence[Attachment]) -> list[DecodedAttachment]:
    decoded = []
    for i, a in enumerate(attachments):
        field = f"attachments[{i}]"
        filename = check_header_text(a.filename, f"{field}.filename", max_length=255)
        if not filename.strip():
            raise Problem.invalid(f"{field}.filename", "must not be empty")
        if not _MIME_TYPE.match(a.content_type):
            raise Problem.invalid(f"{field}.content_type", "expected a MIME type like image/png")
        maintype, _, subtype = a.content_type.lower().partition("/")
        if maintype in ("multipart", "message"):
            raise Problem.invalid(
                f"{field}.content_type",
                f"{maintype}/* cannot be attached as a file; use application/octet-stream",
            )
        if a.content_id is not None and not _CONTENT_ID.match(a.content_id):
            raise Problem.invalid(
                f"{field}.content_id", "use letters, digits and .@-_ only, without <>"
            )
        try:
            data = base64.b64decode(a.content, validate=True)
        except (binascii.Error, ValueError):
            raise Problem.invalid(f"{field}.content", "is not valid base64") from None
        decoded.append(DecodedAttachment(filename, data, maintype, subtype, a.content_id))
    return decoded


class Composition(msgspec.Struct, kw_only=True):
    """Everything a message is built from, already checked."""

    sender: CheckedAddress
    to: list[CheckedAddress]
    cc: list[CheckedAddress]
    reply_to: list[CheckedAddress]
    subject: str
    text: str | None
    html: str | None
    headers: list[tuple[str, str]]
    attachments: list[DecodedAttachment]

    @property
    def utf8(self) -> bool:
        return any(a.utf8 for a in (self.sender, *self.to, *self.cc, *self.reply_to))


def build_message(c: Composition, *, now: float, max_size: int) -> bytes:
    """The message as it will be stored and relayed (Message-ID is added by ingress)."""
    raw = compose(
        sender=c.sender,
        to=c.to,
        cc=c.cc,
        reply_to=c.reply_to,
        subject=c.subject,
        headers=c.headers,
        text=c.text,
        html=c.html,
        attachments=c.attachments,
        now=now,
    )
    if len(raw) > max_size:
        raise Problem(
            413,
            "message-too-large",
            "Message too large",
            f"the message would be {len(raw)} bytes; the limit is {max_size}",
        )
    problem = content_problem(raw)
    if problem is not None:  # our own output: a bug, but never relay it
        raise Problem(
            500, "internal-error", "Internal error", f"built an invalid message: {problem.text}"
        )
    return raw
