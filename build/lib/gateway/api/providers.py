"""``/v1/providers``: each provider's breaker state and counters; a credential check.

Providers belong to the whole gateway, not to one tenant, so both endpoints need a key with
the ``admin`` scope. Counters and breaker states are those of the worker answering (each
worker keeps its own; ``gateway providers`` shows every worker).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import FromPath

from gateway.api.auth import requires
from gateway.api.context import ApiContext
from gateway.api.problems import Problem
from gateway.providers.base import ProviderCheckFailed


class ProviderStatus(msgspec.Struct, kw_only=True):
    name: str
    type: str
    state: str
    """Circuit breaker: ``closed`` (in use), ``open`` (skipped) or ``half_open`` (probing)."""
    sent: int
    failed: int
    """Temporary failures, timeouts included."""
    rejected: int
    """Permanent refusals (bounces)."""
    timeouts: int
    limited: int
    """Deliveries held back by the provider's per-second or per-day limit."""
    opened: int
    """How often the breaker opened."""
    last_error: str


class ProviderList(msgspec.Struct, kw_only=True):
    providers: list[ProviderStatus]


class ProviderCheck(msgspec.Struct, kw_only=True):
    name: str
    ok: bool
    """Whether the provider passed its check."""
    detail: str
    """What was checked, or why the check failed."""


class ProvidersController(Controller):
    path = "/v1/providers"
    tags = ["providers"]

    @get("/", guards=[requires("admin")], summary="Providers: breaker state and counters")
    async def list_providers(self, request: Request[Any, Any, Any]) -> ProviderList:
        api = ApiContext.of(request)
        router = api.gateway.router
        stats = router.provider_stats()
        return ProviderList(
            providers=[
                ProviderStatus(
                    name=name,
                    type=type(api.config.providers[name]).__struct_config__.tag or "",  # type: ignore[arg-type]
                    state=state,
                    last_error=router.breakers[name].last_error,
                    **stats[name],
                )
                for name, state in sorted(router.breaker_states().items())
            ]
        )

    @post(
        "/{name:str}/test",
        guards=[requires("admin")],
        status_code=200,
        summary="Check a provider's credentials without sending mail",
    )
    async def test_provider(
        self, request: Request[Any, Any, Any], name: FromPath[str]
    ) -> ProviderCheck:
        api = ApiContext.of(request)
        provider = api.gateway.providers.get(name)
        if provider is None:
            raise Problem(404, "not-found", "Not found", f"no provider named {name!r}")
        try:
            detail = await provider.check()
        except ProviderCheckFailed as e:
            # The check ran; its finding is the answer (a 5xx would say the gateway failed).
            return ProviderCheck(name=name, ok=False, detail=str(e))
        return ProviderCheck(name=name, ok=True, detail=detail)
