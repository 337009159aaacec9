"""The audience: contacts, lists, subscriptions, topics and an append-only consent log, per
tenant, in SQL (SQLite embedded by default, PostgreSQL when several nodes share it).

``[plugins.audience]`` switches it on (see ``docs/plugins/audience.md``). Hard bounces and
complaints from the event path raise a contact's status; every change to a contact is
published as a :class:`gateway.events.ContactEvent` through ``gateway_contact_event`` (the
sender's webhooks receive them as ``contact.<type>``). The HTTP API is under ``/v1/contacts``,
``/v1/lists`` and ``/v1/topics``.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway_plugins.audience.engine import create_engine, migrate
from gateway_plugins.audience.model import ContactStatus
from gateway_plugins.audience.settings import NAME, Settings, load_settings
from gateway_plugins.audience.store import AudienceStore

from gateway.events import ContactEvent, Event, publish_contact_event
from gateway.plugin_manager import hookimpl

DEFAULT_ENABLED = False
"""Off unless ``[plugins.audience]`` exists."""

log = logging.getLogger("gateway.plugins.audience")


class Audience:
    """The plugin's per-gateway state: settings now, the store once started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: AudienceStore | None = None

    @property
    def store(self) -> AudienceStore:
        if self._store is None:
            raise RuntimeError("the audience store is opened in gateway_startup")
        return self._store

    async def open(self, gateway: Any) -> None:
        engine = create_engine(self.settings.url, schema=self.settings.schema)
        await migrate(engine, schema=self.settings.schema)
        self._store = AudienceStore(engine, gateway.clock)

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None


def audience_of(gateway: Any) -> Audience:
    state: Audience = gateway.plugin_state[NAME]
    return state


@hookimpl
def gateway_configure(gateway: Any) -> None:
    gateway.plugin_state[NAME] = Audience(load_settings(gateway.config))


@hookimpl
async def gateway_startup(gateway: Any) -> None:
    await audience_of(gateway).open(gateway)


@hookimpl
async def gateway_shutdown(gateway: Any) -> None:
    await audience_of(gateway).close()


_STATUS_BY_EVENT: dict[str, ContactStatus] = {"complained": "complained"}


@hookimpl
async def gateway_event(gateway: Any, event: Event) -> None:
    """A hard bounce or a complaint marks the contact; soft bounces and unsubscribes do not
    (an unsubscribe changes one subscription, never the contact)."""
    status = "bounced" if event.type == "bounced" and event.bounce == "hard" else None
    status = _STATUS_BY_EVENT.get(event.type, status)
    if status is None:
        return
    contact = await audience_of(gateway).store.set_status(event.tenant, event.recipient, status)
    if contact is None:
        return
    log.info("contact %s of %s is now %s", contact.id, contact.tenant, status)
    await publish_contact_event(
        gateway,
        ContactEvent(
            type="status_changed",
            tenant=contact.tenant,
            contact_id=contact.id,
            email=contact.email,
            at=gateway.clock.now(),
            source="bounce" if status == "bounced" else "complaint",
            data={"status": status, "message_id": event.message_id},
        ),
    )


@hookimpl
def gateway_register_routes(gateway: Any) -> list[Any]:
    from gateway_plugins.audience.api import audience_routes

    return audience_routes(gateway)
