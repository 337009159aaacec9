"""Normalized events: what happened to a delivery after (or instead of) the send itself.

Every source speaks this one vocabulary — delivery results from the dispatcher, provider
webhooks, inbound DSN/ARF reports, tracking hits — so the consumers (suppression, warming and
reputation, metrics, the sender's own webhooks) are written once. :func:`publish` records the
event in the message's timeline and hands it to every ``gateway_event`` implementation.

It is the only way events are written: nothing calls ``Store.record_event`` around it (a
meta-test, ``tests/unit/test_event_path.py``, fails if a plugin or module does). The schema is
documented, with its version (:data:`SCHEMA_VERSION`), in ``docs/events.md``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import msgspec

from gateway.message import new_message_id
from gateway.plugin_manager import HookError, call_all, has_impls
from gateway.store.base import MessageEvent

SCHEMA_VERSION = 1
"""The event schema's version (``docs/events.md``); sender webhooks carry it as ``version``.
A field added keeps the version; a field renamed, removed or changed in meaning raises it."""

DEFAULT_STREAM = "transactional"

MACHINE_LABELS = frozenset({"machine", "scanner", "proxy:apple-mpp"})
"""Classifications of opens and clicks that are not evidence of a reader: they are kept and
published, but reputation's engagement does not count them."""

log = logging.getLogger("gateway.events")

EventKind = Literal[
    "delivered",
    "deferred",
    "bounced",
    "complained",
    "opened",
    "clicked",
    "unsubscribed",
    "rejected",
    "suppressed",
]


def new_event_id() -> str:
    return "evt_" + new_message_id()


class Event(msgspec.Struct, kw_only=True, frozen=True):
    """One normalized event about one recipient of one message (``docs/events.md``)."""

    type: EventKind
    tenant: str
    recipient: str
    at: float
    id: str = msgspec.field(default_factory=new_event_id)
    """Unique per event, the same for every consumer (the webhook body's ``id``)."""
    stream: str = DEFAULT_STREAM
    """The tenant's message stream the message belongs to."""
    message_id: str = ""
    """Empty when a report could not be tied to a message we sent."""
    delivery_id: int = 0
    provider: str = ""
    """The provider (route) the event came from or is about."""
    bounce: Literal["hard", "soft", ""] = ""
    """For ``bounced``: permanent (``hard``) or temporary (``soft``)."""
    sending_domain: str = ""
    """The From domain of the message, for per-domain reputation and warming."""
    source_ip: str = ""
    """The dedicated IP the message left from, when known."""
    event_id: str = ""
    """Unique id (the provider's event id where it has one), for de-duplication."""
    detail: str = ""
    """Provider reply, bounce diagnostic, unsubscribe details…"""
    url: str = ""
    """For ``clicked``: the link's target."""
    classification: str = ""
    """For ``opened`` and ``clicked``: ``human``, ``machine`` (clicks), ``scanner`` or
    ``proxy:<which>`` (opens); see :data:`MACHINE_LABELS`."""
    signals: tuple[str, ...] = ()
    """For a ``machine`` click: which signals said so (``docs/plugins/click_tracking.md``)."""
    tags: tuple[str, ...] = ()
    """The message's tags (HTTP API), where the publisher knows them."""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    """The message's metadata (HTTP API), where the publisher knows them."""
    data: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def by_machine(self) -> bool:
        """An open or click that is not evidence of a reader (see :data:`MACHINE_LABELS`)."""
        return self.classification in MACHINE_LABELS


ContactEventKind = Literal[
    "subscribed",
    "confirmed",
    "preferences_changed",
    "unsubscribed",
    "imported",
    "erased",
    "status_changed",
]
CONTACT_EVENT_KINDS: tuple[str, ...] = (
    "subscribed",
    "confirmed",
    "preferences_changed",
    "unsubscribed",
    "imported",
    "erased",
    "status_changed",
)


class ContactEvent(msgspec.Struct, kw_only=True, frozen=True):
    """Something that happened to a contact of a tenant's audience (not to a message)."""

    type: ContactEventKind
    tenant: str
    contact_id: int
    email: str
    """The contact's address as given; empty once the contact is erased."""
    at: float
    list_id: int | None = None
    topic_id: int | None = None
    source: str = ""
    """How it happened: ``form``, ``api``, ``import``, ``one-click``, ``preference-center``,
    ``bounce``, ``complaint``."""
    data: dict[str, str] = msgspec.field(default_factory=dict)


async def publish_contact_event(gateway: Any, event: ContactEvent) -> None:
    """Hand ``event`` to every ``gateway_contact_event`` implementation (the sender's
    webhooks among them). Observers that fail are logged, never raised."""
    try:
        await call_all(gateway.pm, "gateway_contact_event", gateway=gateway, event=event)
    except HookError as e:
        log.error("contact event observer failed for %s %s: %s", event.type, event.contact_id, e)


async def publish(gateway: Any, event: Event, *, record: bool = True) -> None:
    """Record ``event`` in its message's timeline (when ``record``) and notify every
    ``gateway_event`` implementation. Observers that fail are logged, never raised.

    The dispatcher publishes delivery results with ``record=False``: its delivery records
    already make those timeline entries.
    """
    if record and event.message_id:
        await gateway.store.record_event(
            MessageEvent(
                message_id=event.message_id,
                at=event.at,
                type=event.type if event.type != "rejected" else "bounced",
                recipient=event.recipient,
                provider=event.provider,
                detail=event.url or event.detail,
                classification=event.classification,
            )
        )
    if not has_impls(gateway.pm, "gateway_event"):
        return
    try:
        await call_all(gateway.pm, "gateway_event", gateway=gateway, event=event)
    except HookError as e:
        log.error("event observer failed for %s %s: %s", event.type, event.message_id, e)
