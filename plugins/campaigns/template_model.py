"""Stored templates: a named template per tenant and its immutable, numbered versions."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

VARIABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
RESERVED_NAMES = frozenset({"contact", "campaign", "links", "tenant"})
"""Top-level names the gateway fills itself: the recipient (``contact``), the campaign
(``campaign``), the recipient's own URLs (``links``: unsubscribe, preferences, view in
browser) and ``tenant``. A template may not declare them."""


class Variable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One variable a template declares; a send supplies its value (or the default)."""

    name: Annotated[str, msgspec.Meta(pattern=VARIABLE_NAME.pattern)]
    required: bool = False
    """A send without a value for it is refused before it starts."""
    default: str | int | float | bool | list[str] | dict[str, str] | None = None
    """Used when a send gives no value (a required variable has none)."""
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""


class TemplateContent(msgspec.Struct, kw_only=True):
    """What one version holds, as given (``text`` ``None``: derive it from ``html``)."""

    subject: str
    html: str
    preheader: str = ""
    text: str | None = None
    variables: list[Variable] = msgspec.field(default_factory=list)


class StoredTemplate(msgspec.Struct, kw_only=True):
    id: int
    tenant: str
    name: str
    description: str
    latest_version: int
    created_at: float
    updated_at: float


class TemplateVersion(msgspec.Struct, kw_only=True):
    """One immutable version. ``text`` is the text template — given, or derived from ``html``
    when the version was saved (``text_derived``)."""

    id: int
    tenant: str
    template_id: int
    version: int
    subject: str
    preheader: str
    html: str
    text: str
    text_derived: bool
    variables: list[Variable]
    created_at: float

    def defaults(self) -> dict[str, Any]:
        """The declared variables' defaults (required ones have none)."""
        return {v.name: v.default for v in self.variables if not v.required}

    def missing(self, given: dict[str, Any]) -> list[str]:
        """The required variables ``given`` lacks, in declaration order."""
        return [v.name for v in self.variables if v.required and given.get(v.name) is None]
