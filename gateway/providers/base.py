"""The provider interface: ``start / send / close``, one ``SendResult`` per send.

Every way out of the gateway — an SMTP smarthost, direct MX, an ESP's HTTP API, the local
capture outbox — is a ``Provider``. A provider classifies each outcome itself, because only
it knows what its errors mean: handed over (``sent``), try again later (``soft_fail``), or
refused for good (``hard_fail``).
"""

from __future__ import annotations

import abc
import re

import msgspec

from gateway.message import SendResult


class OutboundMessage(msgspec.Struct, kw_only=True, frozen=True):
    """One recipient's final copy of a message, ready to hand over."""

    message_id: str
    delivery_id: int
    tenant: str
    mail_from: str
    recipient: str
    raw: bytes
    smtp_utf8: bool = False
    tags: tuple[str, ...] = ()
    """HTTP API tags of the message (none for SMTP mail), for providers that carry them."""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    """HTTP API metadata of the message, passed on as the provider's custom data."""


class Provider(abc.ABC):
    """A way to send mail. Instances are long-lived: open clients in ``start``, reuse them."""

    idempotent: bool = False
    """True when sending the same delivery again cannot make a second copy (the provider's
    API de-duplicates on a key derived from ``message_id`` and ``delivery_id``). Routing then
    resends at once after a timeout instead of waiting for the retry schedule."""
    smtputf8: bool = True
    """It can carry SMTPUTF8 mail (non-ASCII local parts, UTF-8 headers); the SMTP relay and
    MX providers negotiate it with the next hop (:mod:`gateway.providers.capabilities`)."""
    max_size: int = 0
    """The largest message it takes, in octets; 0: no limit of its own."""
    destination_failures: bool = False
    """True when a temporary failure usually concerns the destination rather than the
    provider (direct MX): such failures do not count against the provider's circuit breaker."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self) -> None:
        """Open connections or clients; called once before the first ``send``."""

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> SendResult:
        """Hand ``message`` over. Must not raise for delivery problems: classify them."""

    async def check(self) -> str:
        """Verify credentials and reachability without sending mail (``POST
        /v1/providers/{name}/test``); return what was checked. Raise
        :class:`ProviderCheckFailed` with the reason when the check fails."""
        return "nothing to check"

    async def close(self) -> None:
        """Release what ``start`` opened."""


class ProviderCheckFailed(Exception):
    """A provider's credentials or endpoint did not pass :meth:`Provider.check`."""


_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


def classify_smtp_reply(code: int, text: str) -> SendResult:
    """Map an SMTP reply from the next hop to a ``SendResult`` (5xx permanent, else temporary)."""
    enhanced_match = _ENHANCED.match(text)
    enhanced = enhanced_match.group(1) if enhanced_match else None
    detail = f"{code} {text.strip()}"
    if 500 <= code < 600:
        return SendResult.hard_fail(detail, smtp_code=code, enhanced=enhanced)
    return SendResult.soft_fail(detail, smtp_code=code, enhanced=enhanced)


_UNSAFE_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")


def address_problem(address: str) -> str | None:
    """Why ``address`` must not go on the wire (CR/LF/NUL/space/brackets), or ``None``."""
    if _UNSAFE_ADDRESS.search(address):
        return f"address contains a forbidden character: {address!r}"
    return None
