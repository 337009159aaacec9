"""Suppression: never deliver to a recipient on the tenant's suppression list.

Before every delivery, the recipient is looked up in the tenant's list (entries come from the
HTTP API, CSV imports, one-click unsubscribes, bounces and complaints). Every entry has a
*scope*: ``tenant`` (hard bounces, complaints, manual and API entries by default) stops all the
tenant's mail to the address; ``stream:<name>`` (a one-click unsubscribe from a message of that
stream) stops only that stream's mail, so unsubscribing from a newsletter never stops password
resets. Plugins may add scopes that apply to a delivery (``gateway_suppression_scopes``: the
audience layer's lists and topics). A match records the delivery as ``skipped`` with a reason
named after the entry's — ``bounced``, ``complained``, ``unsubscribed`` or ``suppressed``
(manual), followed by the scope when it is not tenant-wide (``unsubscribed (stream:news)``) —
so it is visible in ``gateway queue`` and the API, never silently dropped.

Addresses match after :func:`gateway.store.base.suppression_key`: whitespace stripped and the
whole address lower-cased, domain *and* local part (see that function for why).

The check runs at delivery time, not only when mail is accepted, because an unsubscribe can
arrive between the two: scheduled sends, retries after a deferral, a queue that backed up.

The list fills itself from normalized events (``gateway_event``): a hard bounce or a complaint
suppresses the recipient for the message's tenant at once; soft bounces are counted per
tenant and address, and ``soft_bounce_limit`` consecutive ones suppress it too. A delivery
the recipient's server confirmed (a provider webhook, or direct MX delivery) ends the run; a
smarthost or an ESP API taking the message does not. An ESP API's refusal of a send
(``bounced`` from the dispatcher) is about the request, not the recipient: it does not count.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.config import ConfigError, plugin_settings
from gateway.durations import parse_duration
from gateway.events import Event
from gateway.message import Delivery, Message, Skip
from gateway.plugin_manager import call_all, has_impls, hookimpl
from gateway.store.base import (
    TENANT_SCOPE,
    Suppression,
    SuppressionReason,
    stream_scope,
    suppression_key,
)
from gateway.suppressions import add_and_publish

NAME = "suppression"

REASONS = {
    "bounce": "bounced",
    "complaint": "complained",
    "unsubscribe": "unsubscribed",
    "manual": "suppressed",
}
"""Store reason → the ``Skip`` reason recorded on the delivery."""


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ignore_reasons: list[str] = msgspec.field(default_factory=list)
    """Entry reasons that do not stop delivery here, e.g. ``["bounce"]`` when bounces are
    handled by the provider; default: every reason suppresses."""
    soft_bounce_limit: int = 5
    """Consecutive soft bounces of one address (per tenant) that suppress it; 0 turns the
    escalation off."""
    soft_bounce_window: str = "30d"
    """How long a run of soft bounces is remembered without a new one."""
    suppress_on_events: bool = True
    """Add hard bounces, complaints and escalated soft bounces to the list."""


class State(msgspec.Struct, kw_only=True, frozen=True):
    ignore: frozenset[str]
    settings: Settings
    window: float


@hookimpl
def gateway_configure(gateway: Any, config: Any) -> None:
    settings = plugin_settings(config, NAME, Settings)
    for i, reason in enumerate(settings.ignore_reasons):
        if reason not in REASONS:
            raise ConfigError(
                f"plugins.{NAME}.ignore_reasons[{i}]: {reason!r} is not one of "
                + ", ".join(REASONS)
            )
    if settings.soft_bounce_limit < 0:
        raise ConfigError(f"plugins.{NAME}.soft_bounce_limit: must be 0 (off) or more")
    try:
        window = parse_duration(settings.soft_bounce_window)
    except ValueError as e:
        raise ConfigError(f"plugins.{NAME}.soft_bounce_window: {e}") from None
    gateway.plugin_state[NAME] = State(
        ignore=frozenset(settings.ignore_reasons), settings=settings, window=window
    )


def skip_reason(entry: Suppression) -> str:
    reason = REASONS[entry.reason]
    return reason if entry.scope == TENANT_SCOPE else f"{reason} ({entry.scope})"


async def scopes_of(gateway: Any, message: Message, delivery: Delivery) -> list[str]:
    """The scopes whose entries stop this delivery, tenant-wide first."""
    scopes = [TENANT_SCOPE, stream_scope(message.stream)]
    if has_impls(gateway.pm, "gateway_suppression_scopes"):
        found = await call_all(
            gateway.pm,
            "gateway_suppression_scopes",
            gateway=gateway,
            message=message,
            delivery=delivery,
        )
        scopes += [s for more in found if more for s in more if s not in scopes]
    return scopes


@hookimpl
async def gateway_recipient_filter(
    gateway: Any, message: Message, delivery: Delivery
) -> Skip | None:
    scopes = await scopes_of(gateway, message, delivery)
    state = gateway.plugin_state.get(NAME)
    ignore = state.ignore if state is not None else frozenset()
    while scopes:
        entry = await gateway.store.find_suppression(message.tenant, delivery.recipient, scopes)
        if entry is None:
            return None
        if entry.reason not in ignore:
            return Skip(skip_reason(entry))
        # An ignored reason in one scope must not hide an entry in another.
        scopes = [s for s in scopes if s != entry.scope]
    return None


@hookimpl
async def gateway_event(gateway: Any, event: Event) -> None:
    state: State | None = gateway.plugin_state.get(NAME)
    if state is None or not state.settings.suppress_on_events or not event.tenant:
        return
    if event.type == "complained":
        await _suppress(gateway, event, "complaint", f"complaint via {event.provider}")
    elif event.type == "bounced" and not _api_handover(gateway, event):
        if event.bounce == "hard" or event.bounce == "":
            await _suppress(gateway, event, "bounce", f"hard bounce: {event.detail}")
        else:
            await _count_soft_bounce(gateway, state, event)
    elif event.type == "delivered" and _reached_the_mailbox(gateway, event):
        await _end_soft_bounce_run(gateway, event)


def _api_handover(gateway: Any, event: Event) -> bool:
    """True for the dispatcher's own result of a send to a provider that reports delivery
    later (an ESP API): not a statement about the recipient."""
    if event.data.get("origin"):
        return False
    provider = getattr(gateway, "providers", {}).get(event.provider)
    return bool(getattr(provider, "reports_delivery", False))


def _reached_the_mailbox(gateway: Any, event: Event) -> bool:
    """A delivery the recipient's own server accepted: reported by a provider webhook, or
    the dispatcher's result of direct MX delivery (a smarthost, an ESP API or the capture
    outbox taking the message says nothing about the mailbox)."""
    if event.data.get("origin"):
        return True
    section = gateway.config.providers.get(event.provider)
    return section is not None and type(section).__struct_config__.tag == "mx"


def _run_key(event: Event) -> str:
    return f"soft-bounces:{event.tenant}:{suppression_key(event.recipient)}"


async def _count_soft_bounce(gateway: Any, state: State, event: Event) -> None:
    limit = state.settings.soft_bounce_limit
    if limit == 0:
        return
    now = gateway.clock.now()
    run = await gateway.store.add_to_counter(
        _run_key(event), 1, expires_at=now + state.window, now=now
    )
    if run >= limit:
        await _suppress(
            gateway, event, "bounce", f"{run} consecutive soft bounces, last: {event.detail}"
        )


async def _end_soft_bounce_run(gateway: Any, event: Event) -> None:
    key = _run_key(event)
    now = gateway.clock.now()
    run = await gateway.store.counter(key, now)
    if run:
        await gateway.store.add_to_counter(key, -run, expires_at=now + 1, now=now)


async def _suppress(gateway: Any, event: Event, reason: SuppressionReason, detail: str) -> None:
    entry = Suppression(
        tenant=event.tenant,
        address=event.recipient,
        reason=reason,
        created_at=gateway.clock.now(),
        detail=detail[:500],
    )
    await add_and_publish(gateway, entry, cause=event)
