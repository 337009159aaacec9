"""What every controller needs from the running gateway, gathered once per app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Request

from gateway.api.auth import RateLimiter, keyring_from_config
from gateway.clock import Clock
from gateway.config import Config, TenantSection
from gateway.ingress import Ingress
from gateway.store.base import Store
from gateway.templates.pool import RenderPool

if TYPE_CHECKING:
    from gateway.server import Gateway


class ApiContext:
    """The gateway's store, ingress, clock and config, the key ring, the rate limiter and the
    template renderers."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config: Config = gateway.config
        self.store: Store = gateway.store
        self.ingress: Ingress = gateway.ingress
        self.clock: Clock = gateway.clock
        self.keys = keyring_from_config(gateway.config)
        self.limiter = RateLimiter(gateway.clock)
        self.plugin_state: dict[str, Any] = gateway.plugin_state
        self.renderers: RenderPool = gateway.renderers
        """The gateway's template render processes (closed when the gateway stops)."""

    @staticmethod
    def of(request: Request[Any, Any, Any]) -> ApiContext:
        """The context of the app serving ``request``."""
        api: ApiContext = request.app.state.api
        return api

    def tenant(self, name: str) -> TenantSection:
        return self.config.tenants[name]
