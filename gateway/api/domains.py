"""``/v1/domains``: sending identities — warming day and caps, reputation, pauses, resume.

A ``read`` key sees the domains its tenant lists in ``sending_domains``, an ``admin`` key may
resume them; an ``operator`` key (a separate scope, never implied by ``admin``) sees every
configured domain and dedicated IP and any other paused identity, and may resume one.
``{name}`` is a domain or, for operators, an IP address. The data comes from the warming plugin
(``gateway.plugin_state["warming"]``); without ``[plugins.warming]`` these endpoints answer 404.
"""

from __future__ import annotations

from typing import Any

import msgspec
from gateway_plugins.warming import Identity, IdentitySummary, Warming, WarmingStatus
from litestar import Controller, Request, get, post
from litestar.params import FromPath

from gateway.api.auth import requires
from gateway.api.context import ApiContext
from gateway.api.problems import Problem
from gateway.config import is_domain_name
from gateway.reputation import Health


class DomainList(msgspec.Struct, kw_only=True):
    domains: list[IdentitySummary]


class Resumed(msgspec.Struct, kw_only=True):
    resumed: bool
    """Whether it was paused."""
    health: Health


def _warming(request: Request[Any, Any, Any]) -> Warming:
    warming: Warming | None = ApiContext.of(request).plugin_state.get("warming")
    if warming is None:
        raise Problem(
            404,
            "not-found",
            "Not found",
            "sending identities need the warming plugin: add [plugins.warming] to the config",
        )
    return warming


def _is_operator(request: Request[Any, Any, Any]) -> bool:
    return bool(request.state.api_key.allows("operator"))


def _tenant_domains(request: Request[Any, Any, Any]) -> list[str]:
    tenant = ApiContext.of(request).tenant(request.state.api_key.tenant)
    return [d.lower() for d in tenant.sending_domains]


async def _identity(request: Request[Any, Any, Any], name: FromPath[str]) -> Identity:
    warming = _warming(request)
    found = await warming.lookup(name)
    if not _is_operator(request) and name.lower() not in _tenant_domains(request):
        found = None
    elif found is None and is_domain_name(name):
        found = warming.domain_identity(name)  # known only from events: an established domain
    if found is None:
        raise Problem(404, "not-found", "Not found", f"no sending domain or IP {name!r}")
    return found


class DomainsController(Controller):
    path = "/v1/domains"
    tags = ["domains"]

    @get("/", guards=[requires("read")], summary="Sending domains: warming, health, pauses")
    async def list_domains(self, request: Request[Any, Any, Any]) -> DomainList:
        warming = _warming(request)
        if _is_operator(request):
            identities = await warming.known()
        else:
            identities = []
            for name in _tenant_domains(request):
                identity = await warming.lookup(name) or warming.domain_identity(name)
                if identity is not None:
                    identities.append(identity)
        return DomainList(domains=[await warming.summary(i) for i in identities])

    @get("/{name:str}/warming", guards=[requires("read")], summary="Warming day, cap, usage")
    async def warming(self, request: Request[Any, Any, Any], name: FromPath[str]) -> WarmingStatus:
        return await _warming(request).status(await _identity(request, name))

    @get("/{name:str}/health", guards=[requires("read")], summary="Rates, score, tier, pause")
    async def health(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Health:
        return await _warming(request).health(await _identity(request, name))

    @post(
        "/{name:str}/resume",
        guards=[requires("admin")],
        status_code=200,
        summary="Lift a pause (auto-pauses are sticky until this call)",
    )
    async def resume(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Resumed:
        warming = _warming(request)
        identity = await _identity(request, name)
        resumed = await warming.resume(identity)
        return Resumed(resumed=resumed, health=await warming.health(identity))
