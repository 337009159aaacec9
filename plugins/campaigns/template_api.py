"""``/v1/templates``: stored, versioned templates over HTTP.

Reads need the ``read`` scope, changes ``admin``. A save is checked first (every field
compiles in the sandbox, every name it reads is declared) and refused with a 422 naming the
field. A change of content is a new version; versions are never edited. ``preview`` renders a
version for a contact (by id or address) or for given values only.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
from gateway_plugins.audience import audience_of
from gateway_plugins.audience.addresses import AddressError
from gateway_plugins.audience.api import Limit, decode_cursor, next_cursor
from gateway_plugins.audience.model import Contact
from gateway_plugins.campaigns import campaigns_of
from gateway_plugins.campaigns.rendering import (
    RenderedMail,
    TemplateRefused,
    check_template,
    contact_variables,
    render_many,
    template_variables,
)
from gateway_plugins.campaigns.template_model import (
    StoredTemplate,
    TemplateContent,
    TemplateVersion,
    Variable,
)
from gateway_plugins.campaigns.template_store import Conflict, NotFound, TemplateStore
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromPath, FromQuery

from gateway.api.auth import request_tenant, requires
from gateway.api.problems import Problem, decode_json

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Description = Annotated[str, msgspec.Meta(max_length=2000)]
Subject = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class ContentIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    subject: Subject
    html: str
    preheader: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    text: str | None = None
    """Plain text; left out, it is derived from ``html`` when the version is saved."""
    variables: Annotated[list[Variable], msgspec.Meta(max_length=200)] = msgspec.field(
        default_factory=list
    )


class TemplateIn(ContentIn, forbid_unknown_fields=True, kw_only=True):
    name: Name
    description: Description = ""


class TemplatePatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name | None = None
    description: Description | None = None


class VersionView(msgspec.Struct, kw_only=True):
    version: int
    subject: str
    preheader: str
    html: str
    text: str
    text_derived: bool
    variables: list[Variable]
    created_at: dt.datetime


class TemplateView(msgspec.Struct, kw_only=True):
    id: int
    name: str
    description: str
    latest_version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    latest: VersionView | None = None
    """The newest version's content (in ``GET /v1/templates/{id}`` and on creation)."""


class TemplatePage(msgspec.Struct, kw_only=True):
    data: list[TemplateView]
    next_cursor: str | None


class VersionList(msgspec.Struct, kw_only=True):
    data: list[VersionView]


class PreviewIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    version: int | None = None
    """Default: the latest."""
    contact_id: int | None = None
    email: str | None = None
    """A contact of the tenant by address (or ``contact_id``); neither: a contact with no
    fields, so merge-field fallbacks show."""
    variables: dict[str, Any] = msgspec.field(default_factory=dict)


class PreviewView(msgspec.Struct, kw_only=True):
    version: int
    subject: str
    preheader: str
    html: str
    text: str


class TemplatesController(Controller):
    path = "/v1/templates"
    tags = ["campaigns"]

    @get("/", guards=[requires("read")], summary="List templates")
    async def index(
        self,
        request: Request[Any, Any, Any],
        cursor: FromQuery[str | None] = None,
        limit: Limit = 100,
    ) -> TemplatePage:
        rows = await _store(request).list_templates(
            request_tenant(request), after=decode_cursor(cursor), limit=limit
        )
        return TemplatePage(
            data=[template_view(t) for t in rows],
            next_cursor=next_cursor(rows, limit),
        )

    @post(
        "/",
        guards=[requires("admin")],
        summary="Create a template (its version 1)",
        opt={"body": TemplateIn},
    )
    async def create(self, request: Request[Any, Any, Any]) -> TemplateView:
        body = decode_json(await request.body(), TemplateIn)
        content = await _checked(request, body)
        try:
            template, version = await _store(request).create(
                request_tenant(request), body.name, content, body.description
            )
        except Conflict as e:
            raise Problem(409, "conflict", "Conflict", str(e), field="name") from None
        return template_view(template, version)

    @get("/{template_id:int}", guards=[requires("read")], summary="One template, latest content")
    async def show(
        self, request: Request[Any, Any, Any], template_id: FromPath[int]
    ) -> TemplateView:
        store, tenant = _store(request), request_tenant(request)
        try:
            template = await store.get(tenant, template_id)
            version = await store.version(tenant, template_id, template.latest_version)
        except NotFound as e:
            raise _not_found(e) from None
        return template_view(template, version)

    @patch(
        "/{template_id:int}",
        guards=[requires("admin")],
        summary="Rename or describe a template",
        opt={"body": TemplatePatch},
    )
    async def change(
        self, request: Request[Any, Any, Any], template_id: FromPath[int]
    ) -> TemplateView:
        body = decode_json(await request.body(), TemplatePatch)
        try:
            template = await _store(request).update(
                request_tenant(request), template_id, name=body.name, description=body.description
            )
        except NotFound as e:
            raise _not_found(e) from None
        except Conflict as e:
            raise Problem(409, "conflict", "Conflict", str(e), field="name") from None
        return template_view(template)

    @delete("/{template_id:int}", guards=[requires("admin")], summary="Delete a template")
    async def remove(self, request: Request[Any, Any, Any], template_id: FromPath[int]) -> None:
        try:
            await _store(request).delete(request_tenant(request), template_id)
        except NotFound as e:
            raise _not_found(e) from None

    @get(
        "/{template_id:int}/versions",
        guards=[requires("read")],
        summary="Every version, newest first",
    )
    async def versions(
        self, request: Request[Any, Any, Any], template_id: FromPath[int]
    ) -> VersionList:
        try:
            rows = await _store(request).versions(request_tenant(request), template_id)
        except NotFound as e:
            raise _not_found(e) from None
        return VersionList(data=[version_view(v) for v in rows])

    @post(
        "/{template_id:int}/versions",
        guards=[requires("admin")],
        summary="Save new content as the next version",
        opt={"body": ContentIn},
    )
    async def add_version(
        self, request: Request[Any, Any, Any], template_id: FromPath[int]
    ) -> VersionView:
        body = decode_json(await request.body(), ContentIn)
        content = await _checked(request, body)
        settings = campaigns_of(request.app.state.api.gateway).settings
        store, tenant = _store(request), request_tenant(request)
        try:
            template = await store.get(tenant, template_id)
            if template.latest_version >= settings.max_versions:
                raise Problem(
                    409,
                    "conflict",
                    "Conflict",
                    f"the template has {settings.max_versions} versions, the most it may have",
                )
            return version_view(await store.add_version(tenant, template_id, content))
        except NotFound as e:
            raise _not_found(e) from None

    @get(
        "/{template_id:int}/versions/{version:int}",
        guards=[requires("read")],
        summary="One version",
    )
    async def show_version(
        self, request: Request[Any, Any, Any], template_id: FromPath[int], version: FromPath[int]
    ) -> VersionView:
        try:
            found = await _store(request).version(request_tenant(request), template_id, version)
        except NotFound as e:
            raise _not_found(e) from None
        return version_view(found)

    @post(
        "/{template_id:int}/preview",
        guards=[requires("read")],
        status_code=200,
        summary="Render a version as a contact would receive it",
        opt={"body": PreviewIn},
    )
    async def preview(
        self, request: Request[Any, Any, Any], template_id: FromPath[int]
    ) -> PreviewView:
        body = decode_json(await request.body(), PreviewIn)
        tenant = request_tenant(request)
        gateway = request.app.state.api.gateway
        try:
            version = await _store(request).version(tenant, template_id, body.version)
        except NotFound as e:
            raise _not_found(e) from None
        contact = await _contact(request, tenant, body)
        try:
            variables = template_variables(
                version,
                contact_variables(contact) if contact is not None else {},
                body.variables,
                {"tenant": tenant},
            )
            (mail,) = await render_many(gateway.renderers, version, [variables])
        except TemplateRefused as e:
            raise refused_problem(e) from None
        if isinstance(mail, TemplateRefused):
            raise refused_problem(mail)
        return preview_view(version.version, mail)


async def _contact(request: Request[Any, Any, Any], tenant: str, body: PreviewIn) -> Contact | None:
    if body.contact_id is not None and body.email is not None:
        raise Problem.invalid("contact_id", "give at most one of contact_id and email")
    store = audience_of(request.app.state.api.gateway).store
    if body.contact_id is not None:
        try:
            found: Contact = await store.get_contact(tenant, body.contact_id)
        except NotFound as e:
            raise _not_found(e) from None
        return found
    if body.email is not None:
        try:
            by_address = await store.find_contact(tenant, body.email)
        except AddressError as e:
            raise Problem.invalid("email", str(e)) from None
        if by_address is None:
            raise Problem(404, "not-found", "Not found", "no contact with that address")
        return by_address
    return None


async def _checked(request: Request[Any, Any, Any], body: ContentIn) -> TemplateContent:
    gateway = request.app.state.api.gateway
    limit = campaigns_of(gateway).settings.max_template_size
    for field in ("subject", "preheader", "html", "text"):
        value = getattr(body, field)
        if value is not None and len(value) > limit:
            raise Problem.invalid(field, f"longer than {limit} characters")
    content = TemplateContent(
        subject=body.subject,
        html=body.html,
        preheader=body.preheader,
        text=body.text,
        variables=body.variables,
    )
    try:
        await check_template(gateway.renderers, content)
    except TemplateRefused as e:
        raise refused_problem(e) from None
    return content


def refused_problem(e: TemplateRefused) -> Problem:
    """422 naming the field (and the limit, when one was broken)."""
    if e.kind == "limit":
        return Problem(
            422,
            "template-limit",
            "Template limit exceeded",
            str(e),
            field=e.field or None,
            limit=e.limit,
        )
    return Problem.invalid(e.field or "template", e.detail)


def _store(request: Request[Any, Any, Any]) -> TemplateStore:
    return campaigns_of(request.app.state.api.gateway).templates


def _not_found(e: NotFound) -> Problem:
    return Problem(404, "not-found", "Not found", str(e))


def _time(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, dt.UTC)


def version_view(v: TemplateVersion) -> VersionView:
    return VersionView(
        version=v.version,
        subject=v.subject,
        preheader=v.preheader,
        html=v.html,
        text=v.text,
        text_derived=v.text_derived,
        variables=v.variables,
        created_at=_time(v.created_at),
    )


def template_view(t: StoredTemplate, latest: TemplateVersion | None = None) -> TemplateView:
    return TemplateView(
        id=t.id,
        name=t.name,
        description=t.description,
        latest_version=t.latest_version,
        created_at=_time(t.created_at),
        updated_at=_time(t.updated_at),
        latest=version_view(latest) if latest is not None else None,
    )


def preview_view(version: int, mail: RenderedMail) -> PreviewView:
    return PreviewView(
        version=version,
        subject=mail.subject,
        preheader=mail.preheader,
        html=mail.html,
        text=mail.text,
    )
