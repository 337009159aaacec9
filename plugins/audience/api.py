"""``/v1/contacts``, ``/v1/lists``, ``/v1/topics``: the audience over HTTP.

Reads need the ``read`` scope, changes ``admin``. Every query is filtered by the key's
tenant, so another tenant's ids answer 404 exactly like ids that do not exist. Lists are
paged by an opaque ``cursor`` (``next_cursor`` of the previous page). Errors are RFC 9457
problem details from the gateway's one error map. Request bodies are decoded strictly (an
unknown or wrong field is a 422 naming it); their Structs are in the OpenAPI document.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from gateway_plugins.audience import audience_of
from gateway_plugins.audience.addresses import AddressError
from gateway_plugins.audience.model import (
    ConsentEvidence,
    ConsentRecord,
    Contact,
    ContactStatus,
    Frequency,
    MailingList,
    OptIn,
    Segment,
    Subscription,
    SubscriptionStatus,
    Topic,
    TopicPreference,
    Visibility,
)
from gateway_plugins.audience.segments import SegmentError
from gateway_plugins.audience.store import AudienceStore, Conflict, ContactChanges, NotFound
from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.params import FromPath, FromQuery, QueryParameter

from gateway.api.auth import request_tenant, requires
from gateway.api.problems import Problem, decode_json
from gateway.events import ContactEvent, ContactEventKind, publish_contact_event
from gateway.message import DeliveryStatus
from gateway.store.base import DeliveryFilter

MAX_BULK = 1000
Limit = Annotated[int, QueryParameter(ge=1, le=1000)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Description = Annotated[str, msgspec.Meta(max_length=2000)]
Attributes = dict[str, str | int | float | bool | list[str] | None]
"""Typed attribute values: strings, numbers, booleans, lists of strings; ``None`` removes."""


# --- request and response Structs ------------------------------------------------------------


class ContactIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
    name: Annotated[str, msgspec.Meta(max_length=200)] | msgspec.UnsetType = msgspec.UNSET
    locale: Annotated[str, msgspec.Meta(max_length=35)] | msgspec.UnsetType = msgspec.UNSET
    timezone: Annotated[str, msgspec.Meta(max_length=64)] | msgspec.UnsetType = msgspec.UNSET
    attributes: Attributes | msgspec.UnsetType = msgspec.UNSET


class ContactPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(max_length=200)] | msgspec.UnsetType = msgspec.UNSET
    locale: Annotated[str, msgspec.Meta(max_length=35)] | msgspec.UnsetType = msgspec.UNSET
    timezone: Annotated[str, msgspec.Meta(max_length=64)] | msgspec.UnsetType = msgspec.UNSET
    attributes: Attributes | msgspec.UnsetType = msgspec.UNSET


class ContactsBulk(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    contacts: Annotated[list[ContactIn], msgspec.Meta(min_length=1, max_length=MAX_BULK)]


class ContactView(msgspec.Struct, kw_only=True):
    id: int
    email: str
    email_normalized: str
    name: str
    locale: str
    timezone: str
    attributes: dict[str, Any]
    status: ContactStatus
    created_at: dt.datetime
    updated_at: dt.datetime


class ContactPage(msgspec.Struct, kw_only=True):
    data: list[ContactView]
    next_cursor: str | None


class BulkResult(msgspec.Struct, kw_only=True):
    created: int
    updated: int
    contacts: list[ContactView]


class ListIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    opt_in: OptIn = "single"
    visibility: Visibility = "private"
    description: Description = ""


class ListPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    opt_in: OptIn | msgspec.UnsetType = msgspec.UNSET
    visibility: Visibility | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET


class ListView(msgspec.Struct, kw_only=True):
    id: int
    name: str
    opt_in: OptIn
    visibility: Visibility
    description: str
    created_at: dt.datetime


class ListPage(msgspec.Struct, kw_only=True):
    data: list[ListView]
    next_cursor: str | None


class TopicIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    description: Description = ""
    default_frequency: Frequency = "immediate"


class TopicPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    default_frequency: Frequency | msgspec.UnsetType = msgspec.UNSET


class TopicView(msgspec.Struct, kw_only=True):
    id: int
    name: str
    description: str
    default_frequency: Frequency
    created_at: dt.datetime


class TopicPage(msgspec.Struct, kw_only=True):
    data: list[TopicView]
    next_cursor: str | None


class ConsentIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How the sender obtained consent (stored in the consent log; IP and user agent only
    as per-tenant HMACs)."""

    form_id: Annotated[str, msgspec.Meta(max_length=200)] = ""
    ip: Annotated[str, msgspec.Meta(max_length=64)] = ""
    user_agent: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    statement_version: Annotated[str, msgspec.Meta(max_length=100)] = ""
    statement: Annotated[str, msgspec.Meta(max_length=10_000)] = ""
    collected_at: dt.datetime | None = None
    attested_by: Annotated[str, msgspec.Meta(max_length=200)] = ""


class SubscribeIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Subscribe a contact, by id or by address (created if new)."""

    contact_id: int | None = None
    email: Annotated[str, msgspec.Meta(max_length=320)] | None = None
    status: Annotated[SubscriptionStatus, msgspec.Meta()] = "active"
    consent: ConsentIn | None = None


class SubscriptionView(msgspec.Struct, kw_only=True):
    list_id: int
    contact_id: int
    status: SubscriptionStatus
    source: str
    created_at: dt.datetime
    updated_at: dt.datetime
    changed: bool = False


class TopicPreferenceIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    subscribed: bool
    frequency: Frequency | None = None


class TopicPreferenceView(msgspec.Struct, kw_only=True):
    topic_id: int
    contact_id: int
    subscribed: bool
    frequency: Frequency
    updated_at: dt.datetime


class TimelineEntry(msgspec.Struct, kw_only=True):
    at: dt.datetime
    kind: str
    """``consent.<action>``, ``subscription``, ``topic`` or ``delivery``."""
    detail: dict[str, Any]


class Erased(msgspec.Struct, kw_only=True):
    contact_id: int
    cancelled_deliveries: int
    """Deliveries to the address that were still waiting in the spool, now removed."""


class Timeline(msgspec.Struct, kw_only=True):
    contact: ContactView
    subscriptions: list[SubscriptionView]
    topics: list[TopicPreferenceView]
    entries: list[TimelineEntry]


# --- conversions -------------------------------------------------------------------------------


def _time(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


def contact_view(c: Contact) -> ContactView:
    return ContactView(
        id=c.id,
        email=c.email,
        email_normalized=c.email_key,
        name=c.name,
        locale=c.locale,
        timezone=c.timezone,
        attributes=c.attributes,
        status=c.status,
        created_at=_time(c.created_at),
        updated_at=_time(c.updated_at),
    )


def list_view(m: MailingList) -> ListView:
    return ListView(
        id=m.id,
        name=m.name,
        opt_in=m.opt_in,
        visibility=m.visibility,
        description=m.description,
        created_at=_time(m.created_at),
    )


def topic_view(t: Topic) -> TopicView:
    return TopicView(
        id=t.id,
        name=t.name,
        description=t.description,
        default_frequency=t.default_frequency,
        created_at=_time(t.created_at),
    )


def subscription_view(s: Subscription, changed: bool = False) -> SubscriptionView:
    return SubscriptionView(
        list_id=s.list_id,
        contact_id=s.contact_id,
        status=s.status,
        source=s.source,
        created_at=_time(s.created_at),
        updated_at=_time(s.updated_at),
        changed=changed,
    )


def preference_view(p: TopicPreference) -> TopicPreferenceView:
    return TopicPreferenceView(
        topic_id=p.topic_id,
        contact_id=p.contact_id,
        subscribed=p.subscribed,
        frequency=p.frequency,
        updated_at=_time(p.updated_at),
    )


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind == "id" and value.isdigit():
            return int(value)
    except (binascii.Error, UnicodeDecodeError):
        pass
    raise Problem(
        400, "invalid-parameter", "Invalid parameter", "cursor: not a cursor", field="cursor"
    )


def next_cursor(rows: list[Any], limit: int) -> str | None:
    """The cursor of the page after ``rows``; ``None`` when this page was the last."""
    return encode_cursor(rows[-1].id) if len(rows) == limit else None


def _changes(body: ContactIn | ContactPatch, field: str) -> ContactChanges:
    if body.timezone not in (msgspec.UNSET, ""):
        try:
            ZoneInfo(str(body.timezone))
        except (ZoneInfoNotFoundError, ValueError):
            raise Problem.invalid(f"{field}timezone", "not an IANA time zone name") from None
    return ContactChanges(
        name=body.name, locale=body.locale, timezone=body.timezone, attributes=body.attributes
    )


def _unset_removed(body: msgspec.Struct) -> dict[str, Any]:
    return {
        name: value
        for name in body.__struct_fields__
        if (value := getattr(body, name)) is not msgspec.UNSET
    }


def _store(request: Request[Any, Any, Any]) -> AudienceStore:
    return audience_of(request.app.state.api.gateway).store


def _not_found(e: NotFound) -> Problem:
    return Problem(404, "not-found", "Not found", str(e))


def _conflict(e: Conflict) -> Problem:
    return Problem(409, "conflict", "Conflict", str(e), field="name")


async def _publish(
    request: Request[Any, Any, Any],
    kind: ContactEventKind,
    contact_id: int,
    *,
    email: str = "",
    list_id: int | None = None,
    topic_id: int | None = None,
    source: str = "api",
    data: dict[str, str] | None = None,
) -> None:
    gateway = request.app.state.api.gateway
    await publish_contact_event(
        gateway,
        ContactEvent(
            type=kind,
            tenant=request_tenant(request),
            contact_id=contact_id,
            email=email,
            at=gateway.clock.now(),
            list_id=list_id,
            topic_id=topic_id,
            source=source,
            data=data or {},
        ),
    )


# --- controllers -------------------------------------------------------------------------------


class ContactsController(Controller):
    path = "/v1/contacts"
    tags = ["audience"]

    @get("/", guards=[requires("read")], summary="List contacts")
    async def index(
        self,
        request: Request[Any, Any, Any],
        status: FromQuery[ContactStatus | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = 100,
    ) -> ContactPage:
        rows = await _store(request).list_contacts(
            request_tenant(request), after=decode_cursor(cursor), limit=limit, status=status
        )
        return ContactPage(
            data=[contact_view(c) for c in rows], next_cursor=next_cursor(rows, limit)
        )

    @post(
        "/",
        guards=[requires("admin")],
        summary="Create a contact, or update the one with this address",
        opt={"body": ContactIn},
    )
    async def create(self, request: Request[Any, Any, Any]) -> Response[ContactView]:
        body = decode_json(await request.body(), ContactIn)
        try:
            contact, created = await _store(request).upsert_contact(
                request_tenant(request), body.email, _changes(body, "")
            )
        except AddressError as e:
            raise Problem.invalid("email", str(e)) from None
        return Response(contact_view(contact), status_code=201 if created else 200)

    @post(
        "/bulk",
        guards=[requires("admin")],
        status_code=200,
        summary=f"Create or update up to {MAX_BULK} contacts",
        opt={"body": ContactsBulk},
    )
    async def bulk(self, request: Request[Any, Any, Any]) -> BulkResult:
        body = decode_json(await request.body(), ContactsBulk)
        checked = [
            (item, _changes(item, f"contacts[{i}].")) for i, item in enumerate(body.contacts)
        ]
        store, tenant = _store(request), request_tenant(request)
        created = updated = 0
        views: list[ContactView] = []
        for i, (item, changes) in enumerate(checked):
            try:
                contact, new = await store.upsert_contact(tenant, item.email, changes)
            except AddressError as e:
                raise Problem.invalid(f"contacts[{i}].email", str(e)) from None
            created += new
            updated += not new
            views.append(contact_view(contact))
        return BulkResult(created=created, updated=updated, contacts=views)

    @get("/{contact_id:int}", guards=[requires("read")], summary="One contact")
    async def show(self, request: Request[Any, Any, Any], contact_id: FromPath[int]) -> ContactView:
        try:
            return contact_view(
                await _store(request).get_contact(request_tenant(request), contact_id)
            )
        except NotFound as e:
            raise _not_found(e) from None

    @patch(
        "/{contact_id:int}",
        guards=[requires("admin")],
        summary="Change a contact's fields (attributes are merged; null removes one)",
        opt={"body": ContactPatch},
    )
    async def change(
        self, request: Request[Any, Any, Any], contact_id: FromPath[int]
    ) -> ContactView:
        body = decode_json(await request.body(), ContactPatch)
        try:
            contact = await _store(request).update_contact(
                request_tenant(request), contact_id, _changes(body, "")
            )
        except NotFound as e:
            raise _not_found(e) from None
        return contact_view(contact)

    @delete("/{contact_id:int}", guards=[requires("admin")], summary="Delete a contact")
    async def remove(self, request: Request[Any, Any, Any], contact_id: FromPath[int]) -> None:
        try:
            await _store(request).delete_contact(request_tenant(request), contact_id)
        except NotFound as e:
            raise _not_found(e) from None

    @get(
        "/{contact_id:int}/export",
        guards=[requires("read")],
        summary="Everything kept about a contact, as JSON (GDPR access and portability)",
    )
    async def export(self, request: Request[Any, Any, Any], contact_id: FromPath[int]) -> Timeline:
        return await contact_timeline(request, contact_id)

    @post(
        "/{contact_id:int}/erase",
        guards=[requires("admin")],
        status_code=200,
        summary="Erase a contact (GDPR): personal data removed, the address kept only hashed",
    )
    async def erase(self, request: Request[Any, Any, Any], contact_id: FromPath[int]) -> Erased:
        store, tenant = _store(request), request_tenant(request)
        try:
            contact = await store.erase_contact(tenant, contact_id)
        except NotFound as e:
            raise _not_found(e) from None
        spool = request.app.state.api.store
        waiting = [DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED]
        cancelled = 0
        for address in {contact.email, contact.email_key}:
            cancelled += await spool.delete(
                DeliveryFilter(recipient=address, tenant=tenant, statuses=waiting, limit=100_000)
            )
        await _publish(request, "erased", contact_id, data={"cancelled_deliveries": str(cancelled)})
        return Erased(contact_id=contact_id, cancelled_deliveries=cancelled)

    @get(
        "/{contact_id:int}/timeline",
        guards=[requires("read")],
        summary="Consent, subscriptions, topics and deliveries of a contact, newest first",
    )
    async def timeline(
        self, request: Request[Any, Any, Any], contact_id: FromPath[int]
    ) -> Timeline:
        return await contact_timeline(request, contact_id)


async def contact_timeline(request: Request[Any, Any, Any], contact_id: int) -> Timeline:
    """A contact with its subscriptions, topics, consent log and deliveries."""
    store, tenant = _store(request), request_tenant(request)
    try:
        contact = await store.get_contact(tenant, contact_id)
    except NotFound as e:
        raise _not_found(e) from None
    subscriptions = await store.subscriptions_of(tenant, contact_id)
    topics = await store.topics_of(tenant, contact_id)
    entries = [_consent_entry(r) for r in await store.consent_log(tenant, contact_id)]
    deliveries = await request.app.state.api.store.list_deliveries(
        DeliveryFilter(recipient=contact.email_key, tenant=tenant, limit=200)
    )
    entries += [
        TimelineEntry(
            at=_time(d.updated_at),
            kind="delivery",
            detail={
                "message_id": d.message_id,
                "status": str(d.status),
                "provider": d.provider,
                "last_error": d.last_error,
            },
        )
        for d in deliveries
    ]
    entries.sort(key=lambda e: e.at, reverse=True)
    return Timeline(
        contact=contact_view(contact),
        subscriptions=[subscription_view(s) for s in subscriptions],
        topics=[preference_view(p) for p in topics],
        entries=entries,
    )


def _consent_entry(record: ConsentRecord) -> TimelineEntry:
    detail: dict[str, Any] = {
        "method": record.method,
        "list_id": record.list_id,
        "topic_id": record.topic_id,
        "form_id": record.form_id,
        "ip_hash": record.ip_hash,
        "user_agent_hash": record.user_agent_hash,
        "statement_version": record.statement_version,
        "statement_hash": record.statement_hash,
        "import_id": record.import_id,
        "attested_by": record.attested_by,
    }
    if record.collected_at is not None:
        detail["collected_at"] = _time(record.collected_at).isoformat()
    return TimelineEntry(at=_time(record.at), kind=f"consent.{record.action}", detail=detail)


class ListsController(Controller):
    path = "/v1/lists"
    tags = ["audience"]

    @get("/", guards=[requires("read")], summary="List mailing lists")
    async def index(
        self,
        request: Request[Any, Any, Any],
        cursor: FromQuery[str | None] = None,
        limit: Limit = 100,
    ) -> ListPage:
        rows = await _store(request).list_lists(
            request_tenant(request), after=decode_cursor(cursor), limit=limit
        )
        return ListPage(data=[list_view(m) for m in rows], next_cursor=next_cursor(rows, limit))

    @post("/", guards=[requires("admin")], summary="Create a list", opt={"body": ListIn})
    async def create(self, request: Request[Any, Any, Any]) -> ListView:
        body = decode_json(await request.body(), ListIn)
        fields = _unset_removed(body)
        name = fields.pop("name")
        try:
            return list_view(
                await _store(request).create_list(request_tenant(request), name, **fields)
            )
        except Conflict as e:
            raise _conflict(e) from None

    @get("/{list_id:int}", guards=[requires("read")], summary="One list")
    async def show(self, request: Request[Any, Any, Any], list_id: FromPath[int]) -> ListView:
        try:
            return list_view(await _store(request).get_list(request_tenant(request), list_id))
        except NotFound as e:
            raise _not_found(e) from None

    @patch(
        "/{list_id:int}",
        guards=[requires("admin")],
        summary="Change a list",
        opt={"body": ListPatch},
    )
    async def change(self, request: Request[Any, Any, Any], list_id: FromPath[int]) -> ListView:
        fields = _unset_removed(decode_json(await request.body(), ListPatch))
        try:
            return list_view(
                await _store(request).update_list(request_tenant(request), list_id, **fields)
            )
        except NotFound as e:
            raise _not_found(e) from None
        except Conflict as e:
            raise _conflict(e) from None

    @delete(
        "/{list_id:int}", guards=[requires("admin")], summary="Delete a list and its subscriptions"
    )
    async def remove(self, request: Request[Any, Any, Any], list_id: FromPath[int]) -> None:
        try:
            await _store(request).delete_list(request_tenant(request), list_id)
        except NotFound as e:
            raise _not_found(e) from None

    @post(
        "/{list_id:int}/subscriptions",
        guards=[requires("admin")],
        status_code=200,
        summary="Subscribe a contact (never re-subscribes one who unsubscribed)",
        opt={"body": SubscribeIn},
    )
    async def subscribe(
        self, request: Request[Any, Any, Any], list_id: FromPath[int]
    ) -> SubscriptionView:
        body = decode_json(await request.body(), SubscribeIn)
        if (body.contact_id is None) == (body.email is None):
            raise Problem.invalid("contact_id", "give exactly one of contact_id and email")
        if body.status == "unsubscribed":
            raise Problem.invalid(
                "status", "use DELETE …/subscriptions/{contact_id} to unsubscribe"
            )
        store, tenant = _store(request), request_tenant(request)
        consent = body.consent or ConsentIn()
        evidence = ConsentEvidence(
            method="api",
            form_id=consent.form_id,
            ip=consent.ip,
            user_agent=consent.user_agent,
            statement_version=consent.statement_version,
            statement=consent.statement,
            collected_at=consent.collected_at.timestamp() if consent.collected_at else None,
            attested_by=consent.attested_by or request.state.api_key.id,
        )
        try:
            await store.get_list(tenant, list_id)
            if body.email is not None:
                contact, _ = await store.upsert_contact(tenant, body.email)
            else:
                assert body.contact_id is not None
                contact = await store.get_contact(tenant, body.contact_id)
            subscription, changed = await store.subscribe(
                tenant, list_id, contact.id, status=body.status, evidence=evidence
            )
        except AddressError as e:
            raise Problem.invalid("email", str(e)) from None
        except NotFound as e:
            raise _not_found(e) from None
        if changed:
            kind: ContactEventKind = "subscribed"
            await _publish(
                request,
                kind,
                contact.id,
                email=contact.email,
                list_id=list_id,
                data={"status": subscription.status},
            )
        return subscription_view(subscription, changed)

    @delete(
        "/{list_id:int}/subscriptions/{contact_id:int}",
        guards=[requires("admin")],
        status_code=200,
        summary="Unsubscribe a contact from this list (nothing else changes)",
    )
    async def unsubscribe(
        self, request: Request[Any, Any, Any], list_id: FromPath[int], contact_id: FromPath[int]
    ) -> SubscriptionView:
        store, tenant = _store(request), request_tenant(request)
        try:
            contact = await store.get_contact(tenant, contact_id)
            subscription, changed = await store.unsubscribe(
                tenant,
                list_id,
                contact_id,
                evidence=ConsentEvidence(method="api", attested_by=request.state.api_key.id),
            )
        except NotFound as e:
            raise _not_found(e) from None
        if subscription is None:
            raise Problem(
                404, "not-found", "Not found", f"contact {contact_id} is not on list {list_id}"
            )
        if changed:
            await _publish(
                request, "unsubscribed", contact_id, email=contact.email, list_id=list_id
            )
        return subscription_view(subscription, changed)


class TopicsController(Controller):
    path = "/v1/topics"
    tags = ["audience"]

    @get("/", guards=[requires("read")], summary="List topics")
    async def index(
        self,
        request: Request[Any, Any, Any],
        cursor: FromQuery[str | None] = None,
        limit: Limit = 100,
    ) -> TopicPage:
        rows = await _store(request).list_topics(
            request_tenant(request), after=decode_cursor(cursor), limit=limit
        )
        return TopicPage(data=[topic_view(t) for t in rows], next_cursor=next_cursor(rows, limit))

    @post("/", guards=[requires("admin")], summary="Create a topic", opt={"body": TopicIn})
    async def create(self, request: Request[Any, Any, Any]) -> TopicView:
        fields = _unset_removed(decode_json(await request.body(), TopicIn))
        name = fields.pop("name")
        try:
            return topic_view(
                await _store(request).create_topic(request_tenant(request), name, **fields)
            )
        except Conflict as e:
            raise _conflict(e) from None

    @get("/{topic_id:int}", guards=[requires("read")], summary="One topic")
    async def show(self, request: Request[Any, Any, Any], topic_id: FromPath[int]) -> TopicView:
        try:
            return topic_view(await _store(request).get_topic(request_tenant(request), topic_id))
        except NotFound as e:
            raise _not_found(e) from None

    @patch(
        "/{topic_id:int}",
        guards=[requires("admin")],
        summary="Change a topic",
        opt={"body": TopicPatch},
    )
    async def change(self, request: Request[Any, Any, Any], topic_id: FromPath[int]) -> TopicView:
        fields = _unset_removed(decode_json(await request.body(), TopicPatch))
        try:
            return topic_view(
                await _store(request).update_topic(request_tenant(request), topic_id, **fields)
            )
        except NotFound as e:
            raise _not_found(e) from None
        except Conflict as e:
            raise _conflict(e) from None

    @delete(
        "/{topic_id:int}", guards=[requires("admin")], summary="Delete a topic and its preferences"
    )
    async def remove(self, request: Request[Any, Any, Any], topic_id: FromPath[int]) -> None:
        try:
            await _store(request).delete_topic(request_tenant(request), topic_id)
        except NotFound as e:
            raise _not_found(e) from None

    @put(
        "/{topic_id:int}/contacts/{contact_id:int}",
        guards=[requires("admin")],
        summary="Opt a contact in or out of a topic, with a frequency",
        opt={"body": TopicPreferenceIn},
    )
    async def preference(
        self, request: Request[Any, Any, Any], topic_id: FromPath[int], contact_id: FromPath[int]
    ) -> TopicPreferenceView:
        body = decode_json(await request.body(), TopicPreferenceIn)
        store, tenant = _store(request), request_tenant(request)
        try:
            contact = await store.get_contact(tenant, contact_id)
            preference = await store.set_topic(
                tenant,
                topic_id,
                contact_id,
                subscribed=body.subscribed,
                frequency=body.frequency,
                evidence=ConsentEvidence(method="api", attested_by=request.state.api_key.id),
            )
        except NotFound as e:
            raise _not_found(e) from None
        await _publish(
            request,
            "preferences_changed",
            contact_id,
            email=contact.email,
            topic_id=topic_id,
            data={"subscribed": str(body.subscribed).lower(), "frequency": preference.frequency},
        )
        return preference_view(preference)


class SegmentIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    filter: dict[str, Any]
    """The filter (docs/plugins/audience.md, "Segments")."""
    list_id: int | None = None
    """The list the segment narrows; none: all the tenant's contacts."""


class SegmentPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    filter: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    list_id: int | msgspec.UnsetType | None = msgspec.UNSET


class SegmentPreview(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    filter: dict[str, Any]
    list_id: int | None = None
    sample: Annotated[int, msgspec.Meta(ge=0, le=100)] = 10


class SegmentView(msgspec.Struct, kw_only=True):
    id: int
    name: str
    list_id: int | None
    filter: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class SegmentPage(msgspec.Struct, kw_only=True):
    data: list[SegmentView]
    next_cursor: str | None


class SegmentCount(msgspec.Struct, kw_only=True):
    count: int
    sample: list[ContactView]


def segment_view(segment: Segment) -> SegmentView:
    return SegmentView(
        id=segment.id,
        name=segment.name,
        list_id=segment.list_id,
        filter=segment.filter,
        created_at=_time(segment.created_at),
        updated_at=_time(segment.updated_at),
    )


def _invalid_filter(e: SegmentError, prefix: str = "") -> Problem:
    return Problem.invalid(prefix + e.path, str(e).partition(": ")[2])


class SegmentsController(Controller):
    path = "/v1/segments"
    tags = ["audience"]

    @get("/", guards=[requires("read")], summary="List segments")
    async def index(
        self,
        request: Request[Any, Any, Any],
        cursor: FromQuery[str | None] = None,
        limit: Limit = 100,
    ) -> SegmentPage:
        rows = await _store(request).list_segments(
            request_tenant(request), after=decode_cursor(cursor), limit=limit
        )
        return SegmentPage(
            data=[segment_view(x) for x in rows], next_cursor=next_cursor(rows, limit)
        )

    @post("/", guards=[requires("admin")], summary="Save a segment", opt={"body": SegmentIn})
    async def create(self, request: Request[Any, Any, Any]) -> SegmentView:
        body = decode_json(await request.body(), SegmentIn)
        try:
            segment = await _store(request).create_segment(
                request_tenant(request), body.name, list_id=body.list_id, filter=body.filter
            )
        except SegmentError as e:
            raise _invalid_filter(e) from None
        except NotFound as e:
            raise Problem.invalid("list_id", str(e)) from None
        except Conflict as e:
            raise _conflict(e) from None
        return segment_view(segment)

    @post(
        "/preview",
        guards=[requires("read")],
        status_code=200,
        summary="Count and sample what a filter selects now, without saving it",
        opt={"body": SegmentPreview},
    )
    async def preview(self, request: Request[Any, Any, Any]) -> SegmentCount:
        body = decode_json(await request.body(), SegmentPreview)
        return await _count(request, body.filter, body.list_id, body.sample)

    @get("/{segment_id:int}", guards=[requires("read")], summary="One segment")
    async def show(self, request: Request[Any, Any, Any], segment_id: FromPath[int]) -> SegmentView:
        try:
            return segment_view(
                await _store(request).get_segment(request_tenant(request), segment_id)
            )
        except NotFound as e:
            raise _not_found(e) from None

    @get(
        "/{segment_id:int}/count",
        guards=[requires("read")],
        summary="How many contacts the segment selects now, and a sample",
    )
    async def count(
        self,
        request: Request[Any, Any, Any],
        segment_id: FromPath[int],
        sample: Annotated[int, QueryParameter(ge=0, le=100)] = 10,
    ) -> SegmentCount:
        try:
            segment = await _store(request).get_segment(request_tenant(request), segment_id)
        except NotFound as e:
            raise _not_found(e) from None
        return await _count(request, segment.filter, segment.list_id, sample)

    @patch(
        "/{segment_id:int}",
        guards=[requires("admin")],
        summary="Change a segment",
        opt={"body": SegmentPatch},
    )
    async def change(
        self, request: Request[Any, Any, Any], segment_id: FromPath[int]
    ) -> SegmentView:
        fields = _unset_removed(decode_json(await request.body(), SegmentPatch))
        try:
            segment = await _store(request).update_segment(
                request_tenant(request), segment_id, **fields
            )
        except SegmentError as e:
            raise _invalid_filter(e) from None
        except NotFound as e:
            if e.kind == "list":
                raise Problem.invalid("list_id", str(e)) from None
            raise _not_found(e) from None
        except Conflict as e:
            raise _conflict(e) from None
        return segment_view(segment)

    @delete("/{segment_id:int}", guards=[requires("admin")], summary="Delete a segment")
    async def remove(self, request: Request[Any, Any, Any], segment_id: FromPath[int]) -> None:
        try:
            await _store(request).delete_segment(request_tenant(request), segment_id)
        except NotFound as e:
            raise _not_found(e) from None


async def _count(
    request: Request[Any, Any, Any], tree: dict[str, Any], list_id: int | None, sample: int
) -> SegmentCount:
    store, tenant = _store(request), request_tenant(request)
    try:
        if list_id is not None:
            await store.get_list(tenant, list_id)
        count = await store.count_matching(tenant, tree, list_id)
        rows = await store.sample_matching(tenant, tree, list_id, sample) if sample else []
    except SegmentError as e:
        raise _invalid_filter(e) from None
    except NotFound as e:
        raise Problem.invalid("list_id", str(e)) from None
    return SegmentCount(count=count, sample=[contact_view(c) for c in rows])


def audience_routes(gateway: Any) -> list[Any]:
    """The controllers, for ``gateway_register_routes``."""
    return [ContactsController, ListsController, TopicsController, SegmentsController]
