"""Rendering stored templates for contacts — the public functions other plugins use.

Everything renders in the gateway's one pool of sandboxed worker processes
(``gateway.templates``: the same limited sandbox, CPU/memory/output limits and wall-clock
deadline as batch sends); nothing here runs a tenant's template on the event loop.

What a template sees (its *variables*):

* ``contact`` — the recipient: ``id``, ``email``, ``name``, ``first_name``, ``last_name``,
  ``locale``, ``timezone``, ``attributes``, and each attribute directly
  (``contact.company``) unless it collides with one of those names. Absent values are
  *undefined*, so ``{{ contact.first_name | default("there") }}`` is the merge field with a
  fallback; used without a default, an undefined value fails that recipient's render;
* the template's declared variables, by name (a send's values over the declared defaults);
* ``campaign``, ``links`` and ``tenant`` as the caller passes them in ``extra``.

Stable entry points (the automation plugin builds on them):

* :func:`contact_variables` — a contact as the ``contact`` variable;
* :func:`template_variables` — the full variables of one recipient, refusing missing
  required variables (:class:`MissingVariables`);
* :func:`render_for_contact` — one contact, one :class:`RenderedMail` (or
  :class:`TemplateRefused`);
* :func:`render_many` — many recipients' variables in one go, split over the pool, one result
  per recipient in order (fan-out);
* :func:`check_template` — a version's content checked before it is saved.
"""

from __future__ import annotations

import asyncio
import html as html_lib
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from gateway_plugins.audience.model import Contact
from gateway_plugins.campaigns.html_text import text_from_html
from gateway_plugins.campaigns.template_model import (
    RESERVED_NAMES,
    TemplateContent,
    TemplateVersion,
)
from jinja2 import TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.templates.pool import RenderPool
from gateway.templates.protocol import Rendered, TemplateSource

FIELDS = ("subject", "preheader", "html", "text")

RefusalKind = Literal["compile", "render", "limit", "variables"]


class RenderedMail(msgspec.Struct, kw_only=True):
    """One recipient's mail: ``html`` already carries the hidden preheader."""

    subject: str
    preheader: str
    html: str
    text: str


class TemplateRefused(Exception):
    """A template cannot be saved or rendered: ``kind`` is ``compile`` (the source),
    ``render`` (this recipient's variables), ``limit`` (a render limit, named in
    ``detail``) or ``variables`` (undeclared or missing variables); ``field`` names the part."""

    def __init__(
        self, kind: RefusalKind, field: str, detail: str, limit: str | None = None
    ) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.kind: RefusalKind = kind
        self.field = field
        self.detail = detail
        self.limit = limit


class MissingVariables(TemplateRefused):
    """Required variables without a value; ``names`` lists them all."""

    def __init__(self, names: list[str]) -> None:
        super().__init__("variables", "variables", "missing required: " + ", ".join(names))
        self.names = names


def contact_variables(contact: Contact) -> dict[str, Any]:
    """``contact`` as templates see it (see the module's docstring). Empty fields are left
    out, so that ``default(...)`` applies to them."""
    attributes = dict(contact.attributes)
    first, _, last = contact.name.strip().partition(" ")
    known: dict[str, Any] = {
        "id": contact.id,
        "email": contact.email,
        "name": contact.name,
        "first_name": attributes.get("first_name") or first,
        "last_name": attributes.get("last_name") or last.strip(),
        "locale": contact.locale,
        "timezone": contact.timezone,
    }
    variables = {k: v for k, v in attributes.items() if v not in (None, "")}
    variables.update({k: v for k, v in known.items() if v not in (None, "")})
    variables["attributes"] = attributes
    return variables


def template_variables(
    version: TemplateVersion,
    contact: dict[str, Any],
    variables: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One recipient's variables: declared defaults, then ``variables`` (the send's values),
    then ``extra`` (``campaign``, ``links``, ``tenant``) and ``contact`` (from
    :func:`contact_variables`). Raises :class:`MissingVariables` when a required variable has
    no value — call it once per send, before any recipient, to refuse a send up front."""
    given = {**version.defaults(), **(variables or {})}
    missing = version.missing(given)
    if missing:
        raise MissingVariables(missing)
    return {**given, **(extra or {}), "contact": contact}


def sources(version: TemplateVersion | TemplateContent) -> tuple[TemplateSource, ...]:
    """The fields as the render workers take them (HTML autoescaped; the preheader is text,
    escaped when it is put into the HTML)."""
    text = version.text if version.text is not None else text_from_html(version.html)
    return (
        TemplateSource("subject", version.subject),
        TemplateSource("preheader", version.preheader),
        TemplateSource("html", version.html, html=True),
        TemplateSource("text", text),
    )


async def render_many(
    pool: RenderPool, version: TemplateVersion, recipients: Sequence[dict[str, Any]]
) -> list[RenderedMail | TemplateRefused]:
    """Each recipient's mail (or why not), in order, for full variable dicts made by
    :func:`template_variables`. The list is split over the pool's workers; a template that
    breaks a limit fails the recipients after it too (the worker stopped there)."""
    if not recipients:
        return []
    templates = sources(version)
    share = -(-len(recipients) // pool.size)
    parts = [recipients[i : i + share] for i in range(0, len(recipients), share)]
    replies = await asyncio.gather(*(pool.render(templates, part) for part in parts))
    out: list[RenderedMail | TemplateRefused] = []
    for part, reply in zip(parts, replies, strict=True):
        results: list[RenderedMail | TemplateRefused] = [_mail(r) for r in reply]
        if len(results) < len(part):
            stop = results[-1] if results else TemplateRefused("limit", "", "render stopped")
            results += [stop] * (len(part) - len(results))
        out += results
    return out


async def render_for_contact(
    pool: RenderPool,
    version: TemplateVersion,
    contact: Contact,
    variables: dict[str, Any] | None = None,
    *,
    extra: dict[str, Any] | None = None,
) -> RenderedMail:
    """``version`` rendered for ``contact`` (a preview, a test send, one automation step);
    raises :class:`TemplateRefused` (or :class:`MissingVariables`)."""
    full = template_variables(version, contact_variables(contact), variables, extra)
    (result,) = await render_many(pool, version, [full])
    if isinstance(result, TemplateRefused):
        raise result
    return result


async def check_template(pool: RenderPool, content: TemplateContent) -> None:
    """Refuse content that could never render: a syntax or sandbox error in any field
    (compiled by a render worker, under the limits), or a top-level name that is neither
    declared nor one the gateway fills. Raises :class:`TemplateRefused`."""
    for variable in content.variables:
        if variable.name in RESERVED_NAMES:
            raise TemplateRefused(
                "variables", "variables", f"{variable.name!r} is filled by the gateway"
            )
    names = [v.name for v in content.variables]
    if len(set(names)) != len(names):
        raise TemplateRefused("variables", "variables", "a variable is declared twice")
    templates = sources(content)
    (reply,) = await pool.render(templates, [{}])
    failure = reply.failure
    if failure is not None and failure.kind != "render":
        raise TemplateRefused(failure.kind, failure.field, failure.detail, failure.limit)
    declared = {*names, *RESERVED_NAMES}
    used = await asyncio.to_thread(_used_names, templates)
    for field, name in used:
        if name not in declared:
            raise TemplateRefused(
                "variables", field, f"uses {name!r}, which the template does not declare"
            )


def _used_names(templates: Sequence[TemplateSource]) -> list[tuple[str, str]]:
    """Top-level names each field reads (parsing only: the workers compiled it already)."""
    environment = ImmutableSandboxedEnvironment()
    used = []
    for template in templates:
        try:
            tree = environment.parse(template.source)
        except (TemplateSyntaxError, RecursionError):
            continue  # the worker's compile reported it
        used += [(template.field, name) for name in sorted(meta.find_undeclared_variables(tree))]
    return used


def _mail(result: Rendered) -> RenderedMail | TemplateRefused:
    if result.failure is not None:
        f = result.failure
        return TemplateRefused(f.kind, f.field, f.detail, f.limit)
    assert result.fields is not None
    fields = result.fields
    return RenderedMail(
        subject=" ".join(fields["subject"].split()),
        preheader=fields["preheader"],
        html=with_preheader(fields["html"], fields["preheader"]),
        text=fields["text"],
    )


_HIDDEN = (
    '<div style="display:none;font-size:1px;line-height:1px;max-height:0;max-width:0;'
    'opacity:0;overflow:hidden;mso-hide:all">{}</div>'
)


def with_preheader(html: str, preheader: str) -> str:
    """``html`` with ``preheader`` as the hidden text inboxes show after the subject, right
    after ``<body…>`` (or first, when there is no body tag)."""
    if not preheader.strip():
        return html
    block = _HIDDEN.format(html_lib.escape(preheader, quote=False))
    lower = html.lower()
    start = lower.find("<body")
    if start >= 0:
        end = html.find(">", start)
        if end >= 0:
            return html[: end + 1] + block + html[end + 1 :]
    return block + html
