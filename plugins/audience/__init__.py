"""The audience: contacts, lists, subscriptions, topics and an append-only consent log, per
tenant, in SQL (SQLite embedded by default, PostgreSQL when several nodes share it).

``[plugins.audience]`` switches it on (see ``docs/plugins/audience.md``). Hard bounces and
complaints from the event path raise a contact's status; every change to a contact is
published as a :class:`gateway.events.ContactEvent` through ``gateway_contact_event`` (the
sender's webhooks receive them as ``contact.<type>``). The HTTP API is under ``/v1/contacts``,
``/v1/lists`` and ``/v1/topics``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from gateway_plugins.audience.addresses import AddressError
from gateway_plugins.audience.engine import create_engine, migrate
from gateway_plugins.audience.imports import Importer, Suppress, SuppressedLookup
from gateway_plugins.audience.model import ConsentEvidence, ContactStatus
from gateway_plugins.audience.settings import NAME, Settings, load_settings
from gateway_plugins.audience.store import AudienceStore, NotFound

from gateway.clock import Clock
from gateway.events import ContactEvent, Event, publish_contact_event
from gateway.plugin_manager import hookimpl
from gateway.store.base import Store, Suppression

DEFAULT_ENABLED = False
"""Off unless ``[plugins.audience]`` exists."""

log = logging.getLogger("gateway.plugins.audience")


class Audience:
    """The plugin's per-gateway state: settings now, the store once started."""

    def __init__(self, settings: Settings, data_dir: Path) -> None:
        self.settings = settings
        self.import_dir = data_dir / "audience-imports"
        """Uploads are streamed here before they are imported (then deleted)."""
        self._store: AudienceStore | None = None
        self._importer: Importer | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        """Imports running in the background."""

    @property
    def store(self) -> AudienceStore:
        if self._store is None:
            raise RuntimeError("the audience store is opened in gateway_startup")
        return self._store

    @property
    def importer(self) -> Importer:
        if self._importer is None:
            raise RuntimeError("the audience store is opened in gateway_startup")
        return self._importer

    async def open(self, gateway: Any) -> None:
        engine = create_engine(self.settings.url, schema=self.settings.schema)
        await migrate(engine, schema=self.settings.schema)
        self._store = AudienceStore(engine, gateway.clock)
        self._importer = Importer(
            self._store,
            suppressed=spool_suppressions(gateway.store),
            suppress=spool_suppress(gateway.store, gateway.clock),
        )

    def run_in_background(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._store is not None:
            await self._store.close()
            self._store = None


def spool_suppressions(spool: Store) -> SuppressedLookup:
    """The lookup an import uses: the tenant's suppression list in the gateway's store."""

    async def suppressed(tenant: str, keys: Sequence[str]) -> set[str]:
        return set(await spool.suppressed(tenant, keys))

    return suppressed


def spool_suppress(spool: Store, clock: Clock) -> Suppress:
    async def suppress(tenant: str, keys: Sequence[str], detail: str) -> None:
        now = clock.now()
        entries = [
            Suppression(tenant=tenant, address=k, reason="manual", created_at=now, detail=detail)
            for k in keys
        ]
        if entries:
            await spool.add_suppressions(entries)

    return suppress


def audience_of(gateway: Any) -> Audience:
    state: Audience = gateway.plugin_state[NAME]
    return state


@hookimpl
def gateway_configure(gateway: Any) -> None:
    gateway.plugin_state[NAME] = Audience(load_settings(gateway.config), gateway.config.data_dir)


@hookimpl
async def gateway_startup(gateway: Any) -> None:
    await audience_of(gateway).open(gateway)


@hookimpl
async def gateway_shutdown(gateway: Any) -> None:
    await audience_of(gateway).close()


_STATUS_BY_EVENT: dict[str, ContactStatus] = {"complained": "complained"}


ONE_CLICK_LIST = "audience_list_id"
"""The ``Event.metadata`` (the message's HTTP API metadata) or ``Event.data`` key naming the
audience list a message was sent for. An ``unsubscribed`` event that carries it (a one-click
unsubscribe of list mail) ends that one subscription; this is where list-scoped one-click
unsubscribes plug in."""


@hookimpl
async def gateway_event(gateway: Any, event: Event) -> None:
    """A hard bounce or a complaint marks the contact; soft bounces do not. An unsubscribe
    changes one subscription — the list the message was for — never the contact."""
    if event.type == "unsubscribed":
        await _unsubscribe_list(gateway, event)
        return
    status: ContactStatus | None = None
    if event.type == "bounced" and event.bounce == "hard":
        status = "bounced"
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


async def _unsubscribe_list(gateway: Any, event: Event) -> None:
    list_id = event.metadata.get(ONE_CLICK_LIST) or event.data.get(ONE_CLICK_LIST, "")
    if not list_id.isdigit():
        return
    store = audience_of(gateway).store
    try:
        contact = await store.find_contact(event.tenant, event.recipient)
    except AddressError:
        return
    if contact is None:
        return
    evidence = ConsentEvidence(method="one-click", form_id=event.message_id)
    try:
        _, changed = await store.unsubscribe(
            event.tenant, int(list_id), contact.id, evidence=evidence
        )
    except NotFound:
        return
    if changed:
        await publish_contact_event(
            gateway,
            ContactEvent(
                type="unsubscribed",
                tenant=contact.tenant,
                contact_id=contact.id,
                email=contact.email,
                at=gateway.clock.now(),
                list_id=int(list_id),
                source="one-click",
                data={"message_id": event.message_id},
            ),
        )


@hookimpl
def gateway_register_routes(gateway: Any) -> list[Any]:
    from gateway_plugins.audience.api import audience_routes
    from gateway_plugins.audience.import_routes import import_routes

    routes = [*audience_routes(gateway), *import_routes(gateway)]
    settings = audience_of(gateway).settings
    if settings.keys:
        from gateway_plugins.audience.pages import page_routes

        routes += page_routes(gateway, settings)
    return routes
