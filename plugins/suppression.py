"""Suppression: never deliver to a recipient on the tenant's suppression list.

Before every delivery, the recipient is looked up in the tenant's list (entries come from the
HTTP API, CSV imports, one-click unsubscribes, bounces and complaints). A match records the
delivery as ``skipped`` with a reason named after the entry's — ``bounced``, ``complained``,
``unsubscribed`` or ``suppressed`` (manual) — so it is visible in ``gateway queue`` and the API,
never silently dropped.

Addresses match after :func:`gateway.store.base.suppression_key`: whitespace stripped and the
whole address lower-cased, domain *and* local part (see that function for why).

The check runs at delivery time, not only when mail is accepted, because an unsubscribe can
arrive between the two: scheduled sends, retries after a deferral, a queue that backed up.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.config import ConfigError, plugin_settings
from gateway.message import Delivery, Message, Skip
from gateway.plugin_manager import hookimpl

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


@hookimpl
def gateway_configure(gateway: Any, config: Any) -> None:
    settings = plugin_settings(config, NAME, Settings)
    for i, reason in enumerate(settings.ignore_reasons):
        if reason not in REASONS:
            raise ConfigError(
                f"plugins.{NAME}.ignore_reasons[{i}]: {reason!r} is not one of "
                + ", ".join(REASONS)
            )
    gateway.plugin_state[NAME] = frozenset(settings.ignore_reasons)


@hookimpl
async def gateway_recipient_filter(
    gateway: Any, message: Message, delivery: Delivery
) -> Skip | None:
    entry = await gateway.store.find_suppression(message.tenant, delivery.recipient)
    if entry is None or entry.reason in gateway.plugin_state.get(NAME, ()):
        return None
    return Skip(REASONS[entry.reason])
