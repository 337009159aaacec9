"""What a delivery needs from a provider, and whether a provider can carry it.

Each provider declares (class attributes on :class:`gateway.providers.base.Provider`):

* ``smtputf8`` — it can carry a message whose envelope has a non-ASCII local part or whose
  header section has raw UTF-8 (RFC 6531/6532). The SMTP relay and direct MX negotiate it per
  session; the ESP APIs do not take such addresses at all.
* ``max_size`` — the largest message it accepts, in octets (0: no limit of its own).

Internationalized *domains* need no SMTPUTF8: every delivery goes out with the recipient's
domain as A-labels (``bücher.example`` → ``xn--bcher-kva.example``, RFC 5890), which every
provider takes. The router skips a provider that cannot carry a delivery; a delivery no
candidate can carry fails alone with the reason, never its message's other recipients.
"""

from __future__ import annotations

import msgspec

from gateway.providers.base import OutboundMessage, Provider


class NotCarriable(ValueError):
    """The address cannot be put on the wire in any form (an invalid internationalized
    domain)."""


def ascii_domain_address(address: str) -> str:
    """``address`` with its domain as A-labels; the local part is kept as it is."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        encoded = domain.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError as e:
        raise NotCarriable(f"{domain!r} is not a valid internationalized domain: {e}") from None
    return f"{local}@{encoded}"


def _header_section(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[:end]


def for_the_wire(message: OutboundMessage) -> OutboundMessage:
    """The delivery as it goes out: domains as A-labels, and ``smtp_utf8`` set exactly when
    this delivery needs it (a non-ASCII local part, or raw UTF-8 in the headers) — an ASCII
    or IDN co-recipient of an internationalized address does not. Raises
    :class:`NotCarriable`."""
    recipient = ascii_domain_address(message.recipient)
    mail_from = ascii_domain_address(message.mail_from) if message.mail_from else ""
    needs = (
        not recipient.isascii()
        or not mail_from.isascii()
        or (message.smtp_utf8 and not _header_section(message.raw).isascii())
    )
    return msgspec.structs.replace(
        message, recipient=recipient, mail_from=mail_from, smtp_utf8=needs
    )


def cannot_carry(provider: Provider, message: OutboundMessage) -> str:
    """Why ``provider`` cannot take ``message`` (as :func:`for_the_wire` made it); ``""``
    when it can."""
    if message.smtp_utf8 and not provider.smtputf8:
        return f"{provider.name} cannot carry SMTPUTF8 mail (a non-ASCII address or header)"
    if provider.max_size and len(message.raw) > provider.max_size:
        return (
            f"{provider.name} takes at most {provider.max_size} octets, "
            f"the message has {len(message.raw)}"
        )
    return ""
