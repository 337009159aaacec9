"""The audience model, per tenant: contacts, lists, subscriptions, topics and consent.

These Structs are what the store returns and the API shows; nothing here crosses tenants.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

ContactStatus = Literal["active", "bounced", "complained", "erased"]
OptIn = Literal["single", "double"]
Visibility = Literal["public", "private"]
SubscriptionStatus = Literal["pending", "active", "unsubscribed"]
SubscriptionSource = Literal[
    "form", "api", "import", "one-click", "preference-center", "bounce", "complaint"
]
Frequency = Literal["immediate", "daily", "weekly", "monthly"]
ConsentAction = Literal["subscribe", "confirm", "unsubscribe", "topic", "erase"]

CONTACT_STATUSES: tuple[ContactStatus, ...] = ("active", "bounced", "complained", "erased")


class Contact(msgspec.Struct, kw_only=True):
    id: int
    tenant: str
    email: str
    """As given."""
    email_key: str
    """Folded (:func:`gateway_plugins.audience.addresses.normalize_email`); unique per tenant."""
    name: str = ""
    locale: str = ""
    timezone: str = ""
    """An IANA zone name (``Europe/Berlin``), or empty."""
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    status: ContactStatus = "active"
    created_at: float = 0.0
    updated_at: float = 0.0


class MailingList(msgspec.Struct, kw_only=True):
    id: int
    tenant: str
    name: str
    opt_in: OptIn = "single"
    visibility: Visibility = "private"
    description: str = ""
    created_at: float = 0.0


class Topic(msgspec.Struct, kw_only=True):
    id: int
    tenant: str
    name: str
    description: str = ""
    default_frequency: Frequency = "immediate"
    created_at: float = 0.0


class Subscription(msgspec.Struct, kw_only=True):
    tenant: str
    list_id: int
    contact_id: int
    status: SubscriptionStatus
    source: SubscriptionSource
    created_at: float
    updated_at: float


class TopicPreference(msgspec.Struct, kw_only=True):
    tenant: str
    topic_id: int
    contact_id: int
    subscribed: bool
    frequency: Frequency
    updated_at: float


class ConsentEvidence(msgspec.Struct, kw_only=True):
    """What the caller knows about how consent was given; IP and user agent arrive raw and are
    stored only as per-tenant HMACs (:mod:`gateway_plugins.audience.consent`)."""

    method: SubscriptionSource
    form_id: str = ""
    ip: str = ""
    user_agent: str = ""
    statement_version: str = ""
    statement: str = ""
    """The consent text shown; stored as its SHA-256 only."""
    collected_at: float | None = None
    confirmed_at: float | None = None
    import_id: str = ""
    attested_by: str = ""


class ConsentRecord(msgspec.Struct, kw_only=True):
    """One append-only entry of the consent log."""

    id: int
    tenant: str
    contact_id: int
    action: ConsentAction
    list_id: int | None
    topic_id: int | None
    method: str
    form_id: str
    ip_hash: str
    user_agent_hash: str
    statement_version: str
    statement_hash: str
    collected_at: float | None
    confirmed_at: float | None
    import_id: str
    attested_by: str
    at: float


class Segment(msgspec.Struct, kw_only=True):
    id: int
    tenant: str
    name: str
    list_id: int | None
    """The list it narrows; ``None`` means all of the tenant's contacts."""
    filter: dict[str, Any]
    created_at: float
    updated_at: float
