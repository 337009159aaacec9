"""What the gateway learns after a send — provider webhooks, inbound DSNs and ARF complaints
— recorded once and acted on.

:func:`report` takes normalized events whose ``tenant`` is not known yet and, for each:

1. ties it to the stored message (its tenant and stream come from there, never from the
   payload); an event about a message this gateway does not have is dropped as ``unmatched``;
2. de-duplicates it on its ``event_id`` with :meth:`Store.first_sighting`, shared by every
   process and node, so a provider's retry or a replayed report counts once;
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
from gateway.message import DeliveryStatus

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
        now = gateway.clock.now()
        if event.event_id and not await store.first_sighting(
            "event:" + event.event_id, expires_at=now + window, now=now
        ):
            outcome.duplicates += 1
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
