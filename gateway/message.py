"""The nouns of the gateway: messages, deliveries, verdicts and provider results.

A *message* is what a client handed us (envelope sender, raw RFC 5322 bytes). Each envelope
recipient becomes one *delivery*, which moves through ``DeliveryStatus`` on its own: tracking,
suppression and retries are per recipient, as ESPs do it.
"""

from __future__ import annotations

import enum
import os
import time
from typing import Literal

import msgspec


class DeliveryStatus(enum.StrEnum):
    """Where one recipient's copy of a message stands."""

    QUEUED = "queued"
    """Waiting for its first attempt."""
    DEFERRED = "deferred"
    """Waiting for a retry after a temporary failure."""
    SENDING = "sending"
    """Claimed by a dispatcher; returned to the queue if that process dies."""
    DELIVERED = "delivered"
    """Accepted by a provider or the next hop (terminal)."""
    BOUNCED = "bounced"
    """Refused permanently (terminal)."""
    EXPIRED = "expired"
    """Still failing temporarily when the message lifetime ran out (terminal)."""
    SKIPPED = "skipped"
    """Not sent on purpose, e.g. a suppressed recipient (terminal)."""

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        DeliveryStatus.DELIVERED,
        DeliveryStatus.BOUNCED,
        DeliveryStatus.EXPIRED,
        DeliveryStatus.SKIPPED,
    }
)

Source = Literal["smtp", "http", "dsn"]


def new_message_id() -> str:
    """A sortable, unique, URL-safe id: 12 hex digits of milliseconds, then 10 random hex digits."""
    return f"{int(time.time() * 1000):012x}{os.urandom(5).hex()}"


class Message(msgspec.Struct, kw_only=True):
    """A message as accepted: envelope plus the raw bytes exactly as they will be relayed."""

    id: str
    tenant: str
    mail_from: str
    """Envelope sender; ``""`` is the null reverse-path (DSNs)."""
    raw: bytes
    created_at: float
    source: Source = "smtp"
    smtp_utf8: bool = False
    """The message or its envelope needs SMTPUTF8 from the next hop."""
    stream: str = "transactional"
    """The tenant's message stream (``gateway/streams.py``)."""


class Delivery(msgspec.Struct, kw_only=True):
    """One recipient's copy of a message and its delivery state."""

    id: int
    message_id: str
    recipient: str
    status: DeliveryStatus
    attempts: int = 0
    next_attempt_at: float = 0.0
    expires_at: float = 0.0
    last_error: str = ""
    provider: str = ""
    provider_message_id: str = ""
    updated_at: float = 0.0
    shard: int = 0
    broadcast: bool = False
    """Of a broadcast stream: claimed after transactional deliveries (``gateway/streams.py``)."""

    @property
    def domain(self) -> str:
        return self.recipient.rpartition("@")[2].lower()


class Attempt(msgspec.Struct, kw_only=True, frozen=True):
    """One try at delivering, as recorded in a delivery's history."""

    at: float
    provider: str
    outcome: str
    detail: str = ""


# --- verdicts: what a hook or policy decides; mapped once to SMTP and once to HTTP -------------


class Reject(msgspec.Struct, frozen=True):
    """Refuse at ingress. ``code`` is the SMTP reply code, ``enhanced`` its RFC 3463 status."""

    code: int
    enhanced: str
    text: str

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500


class Skip(msgspec.Struct, frozen=True):
    """Do not send this delivery, and record why (terminal ``skipped``)."""

    reason: str


class Defer(msgspec.Struct, frozen=True):
    """Try this delivery again no earlier than ``until`` (epoch seconds)."""

    until: float
    reason: str


# --- provider results ------------------------------------------------------------------------

SendKind = Literal["sent", "soft_fail", "hard_fail"]


class SendResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a provider made of one send: handed over, try again later, or refused for good."""

    kind: SendKind
    detail: str = ""
    smtp_code: int | None = None
    enhanced: str | None = None
    provider_message_id: str = ""
    maybe_sent: bool = False
    """A ``soft_fail`` whose outcome is unknown: the provider may have accepted the message (a
    timeout after the hand-over). Routing never sends it through another provider at once."""

    @classmethod
    def sent(cls, detail: str = "", provider_message_id: str = "") -> SendResult:
        return cls(kind="sent", detail=detail, provider_message_id=provider_message_id)

    @classmethod
    def soft_fail(
        cls, detail: str, smtp_code: int | None = None, enhanced: str | None = None
    ) -> SendResult:
        return cls(kind="soft_fail", detail=detail, smtp_code=smtp_code, enhanced=enhanced)

    @classmethod
    def hard_fail(
        cls, detail: str, smtp_code: int | None = None, enhanced: str | None = None
    ) -> SendResult:
        return cls(kind="hard_fail", detail=detail, smtp_code=smtp_code, enhanced=enhanced)

    @classmethod
    def unknown(cls, detail: str) -> SendResult:
        """Timed out after the hand-over: retried later, never failed over at once."""
        return cls(kind="soft_fail", detail=detail, maybe_sent=True)
