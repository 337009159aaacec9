"""Suppressions the gateway adds itself — hard bounces, complaints, runs of soft bounces,
one-click unsubscribes — are stored and then published as ``suppressed`` events, one per entry,
through :func:`gateway.events.publish`: sender webhooks, metrics and plugins learn that an
address stopped receiving mail, and in which scope. Operators' own changes (API, CSV, CLI) are
not events: a bulk import must not flood the tenant's webhooks.
"""

from __future__ import annotations

from typing import Any

from gateway.events import DEFAULT_STREAM, Event, publish
from gateway.store.base import Suppression


def stream_of_scope(scope: str) -> str:
    """The stream a ``stream:<name>`` entry is about; other scopes are the default's."""
    kind, _, name = scope.partition(":")
    return name if kind == "stream" and name else DEFAULT_STREAM


async def add_and_publish(gateway: Any, entry: Suppression, *, cause: Event | None = None) -> None:
    """Store ``entry`` (durably), then publish it (:func:`publish_added`)."""
    await gateway.store.add_suppressions([entry])
    await publish_added(gateway, entry, cause=cause)


async def publish_added(gateway: Any, entry: Suppression, *, cause: Event | None = None) -> None:
    """Publish a stored ``entry`` as a ``suppressed`` event; ``cause`` is the event that led to
    it, whose message, stream and sending domain it carries."""
    await publish(
        gateway,
        Event(
            type="suppressed",
            tenant=entry.tenant,
            recipient=entry.address,
            at=entry.created_at,
            message_id=cause.message_id if cause is not None else "",
            delivery_id=cause.delivery_id if cause is not None else 0,
            stream=cause.stream if cause is not None else stream_of_scope(entry.scope),
            sending_domain=cause.sending_domain if cause is not None else "",
            detail=entry.detail,
            data={"reason": entry.reason, "scope": entry.scope},
        ),
        record=False,  # about the address, not a delivery: the entry itself is the record
    )
