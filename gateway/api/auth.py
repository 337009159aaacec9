"""Who is calling, what they may do, and how often: API-key guard and per-key rate limit.

Each route declares the scope it needs (``guards=[requires("send")]``). The guard finds the
key by its hash, checks the scope, then takes a token from the key's bucket; the key is left
on ``request.state.api_key`` for the handler. Everything a handler reads is filtered by that
key's tenant, so one tenant's key never sees another tenant's data.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gateway.api.problems import Problem, retry_after
from gateway.clock import Clock
from gateway.config import Config
from gateway.tenants import ApiKey, KeyRing, Scope

if TYPE_CHECKING:
    from gateway.api.context import ApiContext

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Coroutine[Any, Any, None]]


def keyring_from_config(config: Config) -> KeyRing:
    http = config.http
    return KeyRing(
        {
            key.key_hash: ApiKey(
                tenant=tenant_name,
                name=key.name,
                scopes=frozenset(key.scopes),
                rate_limit=key.rate_limit or http.rate_limit,
                rate_burst=http.rate_burst,
            )
            for tenant_name, tenant in config.tenants.items()
            for key in tenant.api_keys
        }
    )


class RateLimiter:
    """A token bucket per key, in this process's memory (each worker limits on its own)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: ApiKey) -> float | None:
        """Spend one token; ``None`` if allowed, else seconds until a token is available."""
        if key.rate_limit <= 0:
            return None
        now = self.clock.now()
        tokens, last = self._buckets.get(key.id, (float(key.rate_burst), now))
        tokens = min(float(key.rate_burst), tokens + max(0.0, now - last) * key.rate_limit)
        if tokens >= 1.0:
            self._buckets[key.id] = (tokens - 1.0, now)
            return None
        self._buckets[key.id] = (tokens, now)
        return (1.0 - tokens) / key.rate_limit


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def requires(scope: Scope) -> Guard:
    """A guard admitting keys with ``scope`` (or ``admin``), within their rate limit."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        api: ApiContext = connection.app.state.api
        token = bearer_token(connection.headers.get("authorization"))
        key = api.keys.find(token) if token else None
        if key is None:
            raise Problem(
                401,
                "unauthorized",
                "Unauthorized",
                "send a valid API key as 'Authorization: Bearer <key>'",
                field="Authorization",
                headers={"WWW-Authenticate": 'Bearer realm="gateway"'},
            )
        if not key.allows(scope):
            raise Problem(
                403,
                "forbidden",
                "Forbidden",
                f"API key {key.name!r} lacks the {scope!r} scope this endpoint needs",
                field="Authorization",
            )
        wait = api.limiter.take(key)
        if wait is not None:
            api.gateway.metrics.rate_limited(key.tenant)
            raise Problem(
                429,
                "rate-limited",
                "Too many requests",
                f"API key {key.name!r} is limited to {key.rate_limit:g} requests per second",
                headers=retry_after(wait),
            )
        connection.state.api_key = key

    return guard


def request_tenant(request: Request[Any, Any, Any]) -> str:
    """The tenant of the API key that authenticated ``request`` (set by the key guard)."""
    tenant: str = request.state.api_key.tenant
    return tenant
