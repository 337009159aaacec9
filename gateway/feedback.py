"""What the gateway learns after a send — provider webhooks, inbound DSNs and ARF complaints
— recorded once and acted on.

:func:`report` takes normalized events whose ``tenant`` is not known yet and, for each:

1. de-duplicates it on its ``event_id`` with :meth:`Store.first_sighting`, shared by every
   process and node, so a provider's retry or a replayed report counts once — even one about
   a message this gateway does not know;
2. ties it to the stored message (its tenant and stream come from there, never from the
   payload) and to the delivery: the event's recipient must be the delivery's, and when an
   API provider sent it, the event must come from that provider's webhook and carry the
   provider message id its API returned. An event that matches no message, or fits no
   delivery of it, is logged and dropped as ``unmatched`` — never applied to another delivery
   or tenant;
3. updates the delivery: a hard bounce or a rejection turns a ``delivered`` delivery into
   ``bounced`` (:meth:`Store.mark_delivery`);
4. publishes it (:func:`gateway.events.publish`): a timeline entry, then every
   ``gateway_event`` hook — the suppression plugin suppresses, counts soft bounces, resets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec

from gateway.durations import parse_duration
from gateway.events import Event, publish
from gateway.message import Delivery, DeliveryStatus
from gateway.store.base import DeliveryFilter

log = logging.getLogger("gateway.feedback")


class Outcome(msgspec.Struct, kw_only=True):
    """What became of a batch of reported events (the webhook's answer)."""

    accepted: int = 0
    duplicates: int = 0
    unmatched: int = 0


async def report(gateway: Any, events: Iterable[Event]) -> Outcome:
    outcome = Outcome()
    store = gateway.store
    window = parse_duration(gateway.config.provider_webhooks.dedup_window)
    owners: dict[str, tuple[str, str] | None] = {}
    for event in events:
        # De-duplicate first: an exact replay is a duplicate even when the message is unknown.
        now = gateway.clock.now()
        if event.event_id and not await store.first_sighting(
            "event:" + event.event_id, expires_at=now + window, now=now
        ):
            outcome.duplicates += 1
            continue
        if event.message_id not in owners:
            message = await store.get_message(event.message_id) if event.message_id else None
            owners[event.message_id] = (
                (message.tenant, message.stream) if message is not None else None
            )
        owner = owners[event.message_id]
        if owner is None:
            log.info(
                "%s %s event for %s matches no stored message (%r)",
                event.provider,
                event.type,
                event.recipient,
                event.message_id,
            )
            outcome.unmatched += 1
            continue
        problem = await _delivery_problem(gateway, event)
        if problem:
            log.warning(
                "%s %s event for %s dropped: %s (message %r, delivery %s)",
                event.provider,
                event.type,
                event.recipient,
                problem,
                event.message_id,
                event.delivery_id,
            )
            outcome.unmatched += 1
            continue
        event = msgspec.structs.replace(event, tenant=owner[0], stream=owner[1])
        if event.delivery_id and (
            (event.type == "bounced" and event.bounce == "hard") or event.type == "rejected"
        ):
            await store.mark_delivery(
                event.message_id,
                event.delivery_id,
                DeliveryStatus.BOUNCED,
                f"{event.provider}: {event.detail}" if event.detail else event.provider,
                now,
            )
        await publish(gateway, event)
        outcome.accepted += 1
    return outcome


async def _delivery_problem(gateway: Any, event: Event) -> str:
    """Why ``event`` does not fit a delivery of its message (``""``: it fits)."""
    candidates: list[Delivery] = []
    for recipient in _spellings(event.recipient):
        candidates += await gateway.store.list_deliveries(
            DeliveryFilter(message_id=event.message_id, recipient=recipient, limit=1000)
        )
    if event.delivery_id:
        candidates = [d for d in candidates if d.id == event.delivery_id]
    if not candidates:
        return "no delivery of the message to this recipient"
    for delivery in candidates:
        problem = _provider_problem(gateway, event, delivery)
        if not problem:
            return ""
    return problem


def _provider_problem(gateway: Any, event: Event, delivery: Delivery) -> str:
    provider = gateway.router.providers.get(delivery.provider)
    webhook = getattr(provider, "webhook", "")
    if not webhook:
        return ""  # SMTP, MX, capture: reports come as DSNs to a signed return path
    if webhook != event.provider:
        return f"the delivery went out through {delivery.provider} ({webhook})"
    stored = delivery.provider_message_id.strip("<>")
    reported = str(event.data.get("provider_message_id", "")).strip("<>")
    # SendGrid's events carry the X-Message-Id it returned plus ".filter…" suffixes.
    if stored and not (reported == stored or reported.startswith(stored + ".")):
        return f"provider message id {reported!r} is not {stored!r}"
    return ""


def _spellings(address: str) -> list[str]:
    """``address`` as stored and as a provider reports it: an internationalized domain goes
    out as A-labels (:mod:`gateway.providers.capabilities`) and may come back either way."""
    local, _, domain = address.rpartition("@")
    forms = [address]
    try:
        if not domain.isascii():
            forms.append(f"{local}@{domain.encode('idna').decode('ascii')}")
        elif "xn--" in domain.lower():
            forms.append(f"{local}@{domain.encode('ascii').decode('idna')}")
    except UnicodeError:
        pass
    return list(dict.fromkeys(forms))
