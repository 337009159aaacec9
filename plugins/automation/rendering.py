"""The one seam between a ``send`` step and whatever renders its mail.

Today a step carries its subject, HTML and text inline, rendered by the gateway's sandboxed
template workers (``gateway.templates``: hard CPU, memory and output limits, off the event
loop). Stored templates (``template`` in a step) plug in here once the campaigns' template
store exists; until then such a step fails to render and its enrolment exits with that reason.
"""

from __future__ import annotations

from typing import Any

import msgspec
from gateway_plugins.automation.flows import SendStep

from gateway.templates.pool import RenderPool
from gateway.templates.protocol import TemplateSource


class RenderedMail(msgspec.Struct, kw_only=True):
    subject: str
    html: str | None
    text: str | None


class RenderError(Exception):
    """The step's mail cannot be rendered (a template error or a broken limit)."""


class Renderer:
    def __init__(self, pool: RenderPool) -> None:
        self.pool = pool

    async def render(self, tenant: str, step: SendStep, variables: dict[str, Any]) -> RenderedMail:
        if step.template:
            raise RenderError(f"stored template {step.template!r}: no template store yet")
        sources = [TemplateSource("subject", step.subject)]
        if step.html:
            sources.append(TemplateSource("html", step.html, html=True))
        if step.text:
            sources.append(TemplateSource("text", step.text))
        [result] = (await self.pool.render(sources, [variables]))[:1]
        if result.failure is not None or result.fields is None:
            failure = result.failure
            raise RenderError(failure.detail if failure is not None else "nothing rendered")
        fields = result.fields
        return RenderedMail(
            subject=fields["subject"], html=fields.get("html"), text=fields.get("text")
        )

    async def close(self) -> None:
        await self.pool.close()
