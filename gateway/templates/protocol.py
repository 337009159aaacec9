"""What the event loop and a render worker say to each other over the worker's stdin/stdout:
length-prefixed msgpack frames. One ``RenderJob`` in; out, frames of ``Rendered`` lists, one
per recipient in order, sent every few milliseconds of rendering so the loop sees progress and
can time the renders; the results end early at a compile error or a broken limit."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from gateway.templates.limits import LimitName

HEADER = 4
"""Bytes of the big-endian length in front of every frame."""


class TemplateSource(msgspec.Struct, frozen=True, array_like=True):
    field: str
    """``subject``, ``text`` or ``html``: the name errors carry."""
    source: str
    html: bool = False
    """Autoescape variables (HTML bodies)."""


class RenderJob(msgspec.Struct, array_like=True):
    templates: tuple[TemplateSource, ...]
    variables: list[dict[str, Any]]
    """One dict per recipient, rendered in order."""


class Failure(msgspec.Struct, array_like=True):
    kind: Literal["compile", "render", "limit"]
    field: str
    detail: str
    limit: LimitName | None = None


class Rendered(msgspec.Struct, array_like=True):
    """One recipient's fields, or why not."""

    fields: dict[str, str] | None = None
    failure: Failure | None = None


_encoder = msgspec.msgpack.Encoder()


def frame(message: msgspec.Struct | list[Rendered]) -> bytes:
    body = _encoder.encode(message)
    return len(body).to_bytes(HEADER, "big") + body
