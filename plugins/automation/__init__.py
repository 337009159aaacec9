"""Automation: behaviour triggers and multi-step flows (welcome series, abandoned cart,
re-engagement, win-back) on the audience's contacts.

``[plugins.automation]`` switches it on (needs ``[plugins.audience]``; see
``docs/plugins/automation.md``). Events arrive on one path (:mod:`.intake`): ``POST /v1/events``,
the audience's contact events (``gateway_contact_event``) and opens, clicks and unsubscribes
(``gateway_event``). Flows are versioned definitions (:mod:`.flows`) stored in SQL with their
enrolments (:mod:`.store`); each node runs due steps it claims under a lease (:mod:`.runner`)
and hands each mail to the gateway's ingress as an ordinary message on the step's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from gateway_plugins.audience import audience_of
from gateway_plugins.audience.addresses import AddressError
from gateway_plugins.automation.engine import create_engine, migrate
from gateway_plugins.automation.intake import Intake
from gateway_plugins.automation.rendering import Renderer
from gateway_plugins.automation.runner import Runner
from gateway_plugins.automation.settings import NAME, Settings, load_settings
from gateway_plugins.automation.store import AutomationStore, Enrolment

from gateway.events import ContactEvent, Event
from gateway.plugin_manager import hookimpl
from gateway.templates.limits import RenderLimits
from gateway.templates.pool import RenderPool

DEFAULT_ENABLED = False
"""Off unless ``[plugins.automation]`` exists."""

ENGAGEMENT = ("opened", "clicked", "unsubscribed")
"""Message events that reach flows (opens and clicks by machines under ``machine_<type>``)."""

log = logging.getLogger("gateway.plugins.automation")


class Automation:
    """The plugin's per-gateway state: settings, then the store, runner and intake."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: AutomationStore | None = None
        self._intake: Intake | None = None
        self.runner: Runner | None = None
        self._task: asyncio.Task[None] | None = None
        self._renderer: Renderer | None = None

    @property
    def store(self) -> AutomationStore:
        if self._store is None:
            raise RuntimeError("the automation store is opened in gateway_startup")
        return self._store

    @property
    def intake(self) -> Intake:
        if self._intake is None:
            raise RuntimeError("the automation store is opened in gateway_startup")
        return self._intake

    async def open(self, gateway: Any) -> None:
        engine = create_engine(self.settings.url, schema=self.settings.schema)
        await migrate(engine, schema=self.settings.schema)
        self._store = AutomationStore(engine, gateway.clock)
        templates = gateway.config.templates
        limits = RenderLimits(
            cpu_time=templates.cpu_seconds,
            memory=templates.memory,
            output_size=templates.output_size,
        )
        self._renderer = Renderer(RenderPool(limits, max(1, templates.workers)))
        audience = audience_of(gateway).store
        runner = Runner(
            gateway,
            self._store,
            audience,
            self._renderer,
            self.settings,
            lambda kind, enrolment, outcome, data: flow_webhook(
                gateway, kind, enrolment, outcome, data
            ),
        )
        self.runner = runner
        self._intake = Intake(self._store, runner.conditions, runner)
        self._task = asyncio.create_task(runner.run(), name="automation-runner")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._renderer is not None:
            await self._renderer.close()
            self._renderer = None
        if self._store is not None:
            await self._store.close()
            self._store = None


def automation_of(gateway: Any) -> Automation:
    state: Automation = gateway.plugin_state[NAME]
    return state


async def flow_webhook(
    gateway: Any, kind: str, enrolment: Enrolment, outcome: str, data: dict[str, str]
) -> None:
    """``flow.send``, ``flow.goal``, ``flow.end`` for the sender's webhooks."""
    body = {
        "type": kind,
        "timestamp": gateway.clock.now(),
        "data": {
            "tenant": enrolment.tenant,
            "flow_id": enrolment.flow_id,
            "version": enrolment.version,
            "enrolment_id": enrolment.id,
            "contact_id": enrolment.contact_id,
            "outcome": outcome,
            **{k: v for k, v in data.items() if v},
        },
    }
    payload = json.dumps(body, separators=(",", ":")).encode()
    try:
        await gateway.webhooks.queue(enrolment.tenant, kind, lambda: payload)
    except Exception:
        log.exception("automation: queueing %s for enrolment %d failed", kind, enrolment.id)


@hookimpl
def gateway_configure(gateway: Any) -> None:
    gateway.plugin_state[NAME] = Automation(load_settings(gateway.config))


@hookimpl
async def gateway_startup(gateway: Any) -> None:
    await automation_of(gateway).open(gateway)


@hookimpl
async def gateway_shutdown(gateway: Any) -> None:
    await automation_of(gateway).close()


@hookimpl
async def gateway_event(gateway: Any, event: Event) -> None:
    """Opens, clicks (human ones by their own name) and unsubscribes of a known contact."""
    if event.type not in ENGAGEMENT:
        return
    try:
        contact = await audience_of(gateway).store.find_contact(event.tenant, event.recipient)
    except AddressError:
        return
    if contact is None:
        return
    name = f"machine_{event.type}" if event.by_machine else event.type
    properties: dict[str, Any] = {"stream": event.stream, "url": event.url}
    await automation_of(gateway).intake.accept(
        contact,
        name,
        {k: v for k, v in properties.items() if v},
        event_id=event.id,
        source="engagement",
        at=event.at,
        message_id=event.message_id,
    )


@hookimpl
async def gateway_contact_event(gateway: Any, event: ContactEvent) -> None:
    """Subscribed, confirmed, preferences changed, unsubscribed… as events named so."""
    if event.type == "erased":
        return
    try:
        contact = await audience_of(gateway).store.get_contact(event.tenant, event.contact_id)
    except Exception:
        return
    properties: dict[str, Any] = {"source": event.source, **event.data}
    if event.list_id is not None:
        properties["list_id"] = event.list_id
    if event.topic_id is not None:
        properties["topic_id"] = event.topic_id
    ident = f"contact:{event.type}:{event.contact_id}:{event.list_id}:{event.topic_id}:{event.at}"
    await automation_of(gateway).intake.accept(
        contact, event.type, properties, event_id=ident, source="audience", at=event.at
    )


@hookimpl
def gateway_register_routes(gateway: Any) -> list[Any]:
    from gateway_plugins.automation.api import automation_routes

    return automation_routes(gateway)
