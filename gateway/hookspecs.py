"""The plugin contract: every hook the gateway calls, grouped by phase.

Rules that hold for every hook:

* Every hook receives ``gateway`` (the running :class:`gateway.server.Gateway`) first; an
  implementation takes only the arguments it names.
* Implementations may be ``def`` or ``async def``; the gateway awaits what needs awaiting.
  (pluggy itself cannot await, so the gateway never uses a plain ``pm.hook.x(...)`` result —
  see :mod:`gateway.plugin_manager`.)
* ``None`` always means "no opinion".
* Hooks marked *first result* stop at the first implementation that returns something other
  than ``None``; all others run every implementation.
* A hook that raises while a delivery is processed defers that delivery and records the error;
  mail is never dropped because of a plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.events import ContactEvent, Event
    from gateway.message import Defer, Delivery, Message, Reject, Skip

hookspec = pluggy.HookspecMarker("gateway")

# -------------------------------------------------------------------------------------------------
# Lifecycle
# -------------------------------------------------------------------------------------------------


@hookspec
def gateway_configure(gateway: Any, config: Config) -> None:
    """Validate and keep this plugin's own ``[plugins.<name>]`` table.

    :param gateway: the gateway being configured; keep per-gateway state in
        ``gateway.plugin_state["<name>"]`` (never in module globals).
    :param config: the whole configuration. Decode your table with
        :func:`gateway.config.plugin_settings`, which raises
        :class:`gateway.config.ConfigError` naming ``plugins.<name>.<key>``; the gateway then
        refuses to start.

    Must be a plain ``def`` (it runs while the gateway is built, before any event loop work).
    Called once, before :func:`gateway_startup`.
    """


@hookspec
def gateway_startup(gateway: Any) -> None:
    """Open clients, load keys, warm caches. Runs once per worker, inside its event loop.

    :param gateway: the gateway starting up.
    """


@hookspec
def gateway_reload(gateway: Any) -> None:
    """SIGHUP: the configuration was re-read and its reloadable parts applied
    (:mod:`gateway.ops.reload`). Re-read what a plugin keeps outside the TOML (keys on disk);
    keep the running state when the new one does not load. All implementations run.

    :param gateway: the gateway, already switched to the reloaded configuration.
    """


@hookspec
def gateway_shutdown(gateway: Any) -> None:
    """Close what :func:`gateway_startup` opened.

    :param gateway: the gateway shutting down.
    """


# -------------------------------------------------------------------------------------------------
# Registration: all run, results concatenated
# -------------------------------------------------------------------------------------------------


@hookspec
def gateway_register_routes(gateway: Any) -> list[Any] | None:
    """Add HTTP endpoints (tracking, unsubscribe pages) to the gateway's web server.

    :param gateway: the gateway.
    :return: litestar route handlers or controllers, mounted at the paths they declare.

    Must be a plain ``def``; runs once when the HTTP app is built.
    """


# -------------------------------------------------------------------------------------------------
# Pipeline: per delivery, in ``Dispatcher.process()``, in this order
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def gateway_recipient_filter(gateway: Any, message: Message, delivery: Delivery) -> Skip | None:
    """Decide whether this recipient should get the message at all (suppression).

    :param gateway: the gateway.
    :param message: the stored message (read only).
    :param delivery: the recipient's delivery.
    :return: :class:`gateway.message.Skip` to record the delivery as ``skipped`` with its
        reason (terminal, never silent), or ``None``.

    Stops at the first non-None result.
    """


@hookspec
def gateway_suppression_scopes(
    gateway: Any, message: Message, delivery: Delivery
) -> list[str] | None:
    """Name the suppression scopes, besides ``tenant`` and ``stream:<the message's stream>``,
    whose entries stop this delivery (the audience layer adds ``list:<id>``, ``topic:<id>``).

    :param gateway: the gateway.
    :param message: the stored message (read only).
    :param delivery: the recipient's delivery.
    :return: scopes (``<kind>:<name>``, see :func:`gateway.store.base.is_scope`), or an empty
        list / ``None``.

    All implementations run; the suppression plugin asks from its
    :func:`gateway_recipient_filter` and checks every scope with one store lookup.
    """


@hookspec
def gateway_transform(gateway: Any, message: Message, delivery: Delivery) -> bytes | None:
    """Rewrite this recipient's copy of the message (links, open pixel, headers).

    :param gateway: the gateway.
    :param message: the message; ``message.raw`` holds the bytes as transformed so far.
    :param delivery: the recipient's delivery.
    :return: the new raw bytes (CRLF line endings), or ``None`` to leave them unchanged.

    All implementations run, in plugin order, each seeing the previous one's output.
    """


@hookspec
def gateway_sign(gateway: Any, message: Message, delivery: Delivery) -> bytes | None:
    """Sign the final bytes (DKIM). Runs after every :func:`gateway_transform`.

    :param gateway: the gateway.
    :param message: the message with its final, transformed ``raw`` bytes.
    :param delivery: the recipient's delivery.
    :return: header lines to prepend (e.g. ``b"DKIM-Signature: ...\\r\\n"``), or ``None``.

    All implementations run; their headers are prepended in plugin order.
    """


@hookspec
def gateway_modify_routes(
    gateway: Any, message: Message, delivery: Delivery, routes: list[str]
) -> None:
    """Reorder or filter, in place, the provider names this delivery may be sent through.

    :param gateway: the gateway.
    :param message: the message.
    :param delivery: the recipient's delivery.
    :param routes: provider names in the order they will be tried (failover order). Remove
        a name to keep the delivery off that route; leaving the list empty defers the delivery.

    All implementations run, in plugin order (pools, ISP affinity, identity health).
    """


@hookspec(firstresult=True)
def gateway_permit(gateway: Any, message: Message, delivery: Delivery, route: str) -> Defer | None:
    """Allow or postpone sending this delivery through ``route`` now (warming caps, rates).

    :param gateway: the gateway.
    :param message: the message.
    :param delivery: the recipient's delivery.
    :param route: the provider name about to be used.
    :return: :class:`gateway.message.Defer` to postpone without counting an attempt, or
        ``None`` to allow.

    Stops at the first non-None result.
    """


# -------------------------------------------------------------------------------------------------
# Ingress: SMTP and HTTP alike, so a policy is written once
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def gateway_accept_message(gateway: Any, submission: Any) -> Reject | None:
    """Accept or refuse a whole submission before it is spooled.

    :param gateway: the gateway.
    :param submission: the :class:`gateway.ingress.Submission` (envelope and raw bytes).
    :return: :class:`gateway.message.Reject` to refuse (its code decides temporary or
        permanent), or ``None``.

    Stops at the first non-None result.
    """


# -------------------------------------------------------------------------------------------------
# Outcomes: observers
# -------------------------------------------------------------------------------------------------


@hookspec
def gateway_delivery_result(
    gateway: Any, message: Message, delivery: Delivery, status: str, detail: str
) -> None:
    """Observe a delivery's new state after processing (delivered, deferred, bounced, …).

    :param gateway: the gateway.
    :param message: the message.
    :param delivery: the delivery as it was claimed.
    :param status: the new :class:`gateway.message.DeliveryStatus` value.
    :param detail: the provider's reply or the reason.

    All implementations run; a failing observer is logged and does not change the outcome.
    """


@hookspec
def gateway_event(gateway: Any, event: Event) -> None:
    """Observe a normalized event: delivered, deferred, bounced, complained, opened, clicked,
    unsubscribed, rejected — from delivery results, provider webhooks, inbound DSN/ARF
    reports and tracking alike, each exactly once (see :mod:`gateway.events` and
    ``docs/events.md``).

    :param gateway: the gateway.
    :param event: the :class:`gateway.events.Event`.

    All implementations run; suppression, warming and reputation, metrics and the sender's
    webhooks subscribe here. A failing observer is logged and does not affect the others'
    view of the event's source (the webhook is still answered, the delivery still recorded).
    """


@hookspec
def gateway_contact_event(gateway: Any, event: ContactEvent) -> None:
    """Observe a change to a contact of a tenant's audience: subscribed, confirmed,
    preferences_changed, unsubscribed, imported, erased, status_changed (see
    :class:`gateway.events.ContactEvent`). The audience plugin publishes these through
    :func:`gateway.events.publish_contact_event`.

    :param gateway: the gateway.
    :param event: the :class:`gateway.events.ContactEvent`.

    All implementations run; the sender's webhooks subscribe here (as ``contact.<type>``).
    A failing observer is logged and does not undo the change.
    """


# -------------------------------------------------------------------------------------------------
# Campaign decisions: first result replaces the built-in rule
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def gateway_ab_decide(gateway: Any, variants: list[Any], rules: Any, number: int) -> Any | None:
    """Replace the A/B decision rule at a planned look.

    :param gateway: the gateway.
    :param variants: the :class:`gateway_plugins.ab_testing.decision.Variant` counts, control
        first (``n`` recipients, ``x`` who did the metric; machine opens and clicks never count).
    :param rules: the test's :class:`gateway_plugins.ab_testing.decision.Rules`.
    :param number: the 1-based look (of ``rules.looks``).

    Return a :class:`gateway_plugins.ab_testing.decision.Look` (stored and served as the
    built-in one is), or ``None`` to leave the decision to the built-in rule. First result wins.
    """


@hookspec(firstresult=True)
def gateway_send_time_plan(
    gateway: Any, profile: Any | None, scheduled_at: float, key: str, window: float
) -> float | None:
    """Replace send-time optimization's planned time for one campaign recipient.

    :param gateway: the gateway.
    :param profile: the contact's :class:`gateway_plugins.send_time.profile.Profile`, or
        ``None`` without human engagement in the last 90 days.
    :param scheduled_at: the campaign's scheduled time (seconds since the epoch).
    :param key: a stable key of the campaign run and contact (for spreading load).
    :param window: the optimization window in seconds.

    Return the planned time (seconds since the epoch, inside ``[scheduled_at, scheduled_at +
    window)``), or ``None`` for the built-in formula. Caps, throttle and the send window are
    applied afterwards either way (:mod:`gateway_plugins.send_time.capacity`). First result wins.
    """
