"""``/v1/events``, ``/v1/flows``, ``/v1/enrolments``: automation over HTTP.

Events need the ``send`` scope; reading flows ``read``, changing them ``admin``. Every query is
filtered by the key's tenant (another tenant's ids answer 404). Errors are RFC 9457 problem
details; a flow document with several faults lists each in ``errors`` (one per bad step).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
from gateway_plugins.audience import audience_of
from gateway_plugins.audience.addresses import AddressError
from gateway_plugins.audience.store import NotFound as AudienceNotFound
from gateway_plugins.automation import automation_of
from gateway_plugins.automation.flows import FlowErrors, parse_flow
from gateway_plugins.automation.store import (
    AutomationStore,
    Conflict,
    Enrolment,
    FlowRow,
    FlowStatus,
    NotFound,
    PathEntry,
)
from litestar import Controller, Request, Response, get, post, put
from litestar.params import FromPath, FromQuery

from gateway.api.auth import request_tenant, requires
from gateway.api.problems import FieldError, Problem, decode_json

EventName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]


class EventIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    """Your id for the event: sending it again changes nothing (idempotent)."""
    name: EventName
    contact_id: int | None = None
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)] | None = None
    """The contact, by id, or by address (a contact is created for a new address)."""
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    at: dt.datetime | None = None
    """When it happened; default: now."""


class EventResult(msgspec.Struct, kw_only=True):
    id: str
    contact_id: int
    duplicate: bool
    enrolled: list[int]
    goals: list[int]


class FlowIn(msgspec.Struct, kw_only=True):
    """A flow definition (``docs/plugins/automation.md``): checked step by step."""

    name: str
    trigger: dict[str, Any]
    steps: list[dict[str, Any]]
    reentry: str = "after_exit"
    cooldown: str = "24h"
    list_id: int = 0
    human_only: bool = True


class FlowView(msgspec.Struct, kw_only=True):
    id: int
    name: str
    status: FlowStatus
    version: int
    trigger_event: str
    created_at: dt.datetime
    updated_at: dt.datetime
    definition: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None


class PathView(msgspec.Struct, kw_only=True):
    step: int
    kind: str
    outcome: str
    message_id: str
    at: dt.datetime


class EnrolmentView(msgspec.Struct, kw_only=True):
    id: int
    flow_id: int
    version: int
    contact_id: int
    state: str
    step: int
    due_at: dt.datetime | None
    reason: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    path: list[PathView]


def _time(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def flow_view(row: FlowRow, **extra: Any) -> FlowView:
    return FlowView(
        id=row.id,
        name=row.name,
        status=row.status,
        version=row.version,
        trigger_event=row.trigger_event,
        created_at=_time(row.created_at),
        updated_at=_time(row.updated_at),
        **extra,
    )


def enrolment_view(e: Enrolment, path: list[PathEntry]) -> EnrolmentView:
    return EnrolmentView(
        id=e.id,
        flow_id=e.flow_id,
        version=e.version,
        contact_id=e.contact_id,
        state=e.state,
        step=e.step,
        due_at=_time(e.due_at) if e.due_at is not None else None,
        reason=e.reason,
        started_at=_time(e.started_at),
        ended_at=_time(e.ended_at) if e.ended_at is not None else None,
        path=[
            PathView(
                step=p.step, kind=p.kind, outcome=p.outcome, message_id=p.message_id, at=_time(p.at)
            )
            for p in path
        ],
    )


def _gateway(request: Request[Any, Any, Any]) -> Any:
    return request.app.state.api.gateway


def _store(request: Request[Any, Any, Any]) -> AutomationStore:
    return automation_of(_gateway(request)).store


def _not_found(e: NotFound) -> Problem:
    return Problem(404, "not-found", "Not found", str(e))


def _checked(document: dict[str, Any]) -> Any:
    try:
        return parse_flow(document)
    except FlowErrors as e:
        field = e.errors[0][0]
        raise Problem(
            422,
            "invalid-flow",
            "Invalid flow",
            str(e),
            field=field or None,
            errors=[FieldError(field=f, detail=d) for f, d in e.errors],
        ) from None


class EventsController(Controller):
    path = "/v1/events"
    tags = ["automation"]

    @post("/", guards=[requires("send")], summary="Record a contact event", opt={"body": EventIn})
    async def record(self, request: Request[Any, Any, Any]) -> Response[EventResult]:
        body = decode_json(await request.body(), EventIn)
        tenant, gateway = request_tenant(request), _gateway(request)
        audience = audience_of(gateway).store
        if (body.contact_id is None) == (body.email is None):
            raise Problem.invalid("contact_id", "give the contact's id or its email, not both")
        if body.contact_id is not None:
            try:
                contact = await audience.get_contact(tenant, body.contact_id)
            except AudienceNotFound as e:
                raise Problem(404, "not-found", "Not found", str(e), field="contact_id") from None
        else:
            assert body.email is not None
            try:
                contact, _ = await audience.upsert_contact(tenant, body.email)
            except AddressError as e:
                raise Problem.invalid("email", str(e)) from None
        if contact.status == "erased":
            raise Problem(
                404, "not-found", "Not found", "the contact was erased", field="contact_id"
            )
        at = body.at.timestamp() if body.at is not None else gateway.clock.now()
        outcome = await automation_of(gateway).intake.accept(
            contact, body.name, body.properties, event_id=body.id, source="api", at=at
        )
        result = EventResult(
            id=body.id,
            contact_id=contact.id,
            duplicate=outcome.duplicate,
            enrolled=outcome.enrolled,
            goals=outcome.goals,
        )
        return Response(result, status_code=200 if outcome.duplicate else 202)


class FlowsController(Controller):
    path = "/v1/flows"
    tags = ["automation"]

    @get("/", guards=[requires("read")], summary="List flows")
    async def index(self, request: Request[Any, Any, Any]) -> list[FlowView]:
        return [flow_view(f) for f in await _store(request).list_flows(request_tenant(request))]

    @post(
        "/", guards=[requires("admin")], summary="Create a flow (version 1)", opt={"body": FlowIn}
    )
    async def create(self, request: Request[Any, Any, Any]) -> Response[FlowView]:
        document = decode_json(await request.body(), dict[str, Any])
        flow = _checked(document)
        try:
            row = await _store(request).create_flow(request_tenant(request), flow, document)
        except Conflict as e:
            raise Problem(409, "conflict", "Conflict", str(e), field="name") from None
        return Response(flow_view(row, definition=document), status_code=201)

    @get("/{flow_id:int}", guards=[requires("read")], summary="One flow: definition and counts")
    async def show(
        self, request: Request[Any, Any, Any], flow_id: FromPath[int], version: FromQuery[int] = 0
    ) -> FlowView:
        store, tenant = _store(request), request_tenant(request)
        try:
            row = await store.get_flow(tenant, flow_id)
            document = await store.document(tenant, flow_id, version or row.version)
            stats = await store.stats(tenant, flow_id)
        except NotFound as e:
            raise _not_found(e) from None
        return flow_view(row, definition=document, stats=stats)

    @put(
        "/{flow_id:int}",
        guards=[requires("admin")],
        summary="A new version (enrolments in flight keep theirs)",
        opt={"body": FlowIn},
    )
    async def change(self, request: Request[Any, Any, Any], flow_id: FromPath[int]) -> FlowView:
        document = decode_json(await request.body(), dict[str, Any])
        flow = _checked(document)
        try:
            row = await _store(request).new_version(
                request_tenant(request), flow_id, flow, document
            )
        except NotFound as e:
            raise _not_found(e) from None
        except Conflict as e:
            raise Problem(409, "conflict", "Conflict", str(e), field="name") from None
        return flow_view(row, definition=document)

    @post("/{flow_id:int}/pause", guards=[requires("admin")], status_code=200, summary="Pause")
    async def pause(self, request: Request[Any, Any, Any], flow_id: FromPath[int]) -> FlowView:
        return await _status(request, flow_id, "paused")

    @post("/{flow_id:int}/resume", guards=[requires("admin")], status_code=200, summary="Resume")
    async def resume(self, request: Request[Any, Any, Any], flow_id: FromPath[int]) -> FlowView:
        return await _status(request, flow_id, "active")

    @post("/{flow_id:int}/archive", guards=[requires("admin")], status_code=200, summary="Archive")
    async def archive(self, request: Request[Any, Any, Any], flow_id: FromPath[int]) -> FlowView:
        return await _status(request, flow_id, "archived")


async def _status(request: Request[Any, Any, Any], flow_id: int, status: FlowStatus) -> FlowView:
    store, tenant = _store(request), request_tenant(request)
    try:
        row = await store.get_flow(tenant, flow_id)
        if row.status == "archived" and status != "archived":
            raise Problem(409, "conflict", "Conflict", "an archived flow stays archived")
        row = await store.set_status(tenant, flow_id, status)
    except NotFound as e:
        raise _not_found(e) from None
    automation = automation_of(_gateway(request))
    if status == "active" and automation.runner is not None:
        automation.runner.wake()
    return flow_view(row)


class EnrolmentsController(Controller):
    path = "/v1/enrolments"
    tags = ["automation"]

    @get("/", guards=[requires("read")], summary="A contact's enrolments, with their paths")
    async def index(
        self, request: Request[Any, Any, Any], contact_id: FromQuery[int]
    ) -> list[EnrolmentView]:
        store = _store(request)
        enrolments = await store.enrolments_of(request_tenant(request), contact_id)
        return [enrolment_view(e, await store.path_of(e.id)) for e in enrolments]


def automation_routes(gateway: Any) -> list[Any]:
    """The controllers, for ``gateway_register_routes``."""
    return [EventsController, FlowsController, EnrolmentsController]
