"""``create_app(gateway)``: the litestar application for one gateway worker.

Controllers (one per resource, Structs beside them) are mounted under ``/v1``; errors go
through the one map in ``problems``; the OpenAPI 3.1 document is at ``/docs/openapi.json``
with an interactive page at ``/docs``. Request bodies are decoded by the handlers themselves
(strictly, with errors naming the field, and ``POST /v1/messages`` also takes
``message/rfc822``), so their schemas are added to the generated document by
``openapi.complete_document``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import (
    Components,
    SecurityScheme,
)
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope

from gateway import __version__
from gateway.api.assets import PackagedSwaggerUI, asset_routes, load_swagger_ui
from gateway.api.console import CONSOLE_ROUTES
from gateway.api.context import ApiContext
from gateway.api.dns import DnsController, mta_sts_policy_file
from gateway.api.domains import DomainsController
from gateway.api.http_metrics import http_metrics
from gateway.api.messages import MessagesController
from gateway.api.openapi import complete_document, declared_bodies
from gateway.api.ops import OPS_ROUTES, WebhooksController
from gateway.api.problems import EXCEPTION_HANDLERS
from gateway.api.providers import ProvidersController
from gateway.api.stats import StatsController
from gateway.api.suppressions import SuppressionsController
from gateway.api.webhooks import webhook_routes

if TYPE_CHECKING:
    from gateway.server import Gateway

log = logging.getLogger("gateway.api")

PURGE_INTERVAL = 3600.0
"""How often expired idempotency keys are deleted."""


def create_app(gateway: Gateway) -> Litestar:
    """The HTTP API of ``gateway``; serve it with ``gateway.api.serving.HttpServer``."""
    api = ApiContext(gateway)

    @contextlib.asynccontextmanager
    async def api_lifespan(_: Litestar) -> AsyncIterator[None]:
        task = asyncio.create_task(_purge_forever(api), name="idempotency-purge")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    openapi = None
    swagger_ui = load_swagger_ui() if gateway.config.http.docs else None
    if gateway.config.http.docs:
        openapi = OpenAPIConfig(
            title="ESP gateway API",
            version=__version__,
            description="Send mail and follow what happens to it. Authenticate with "
            "`Authorization: Bearer <API key>`; errors are RFC 9457 problem details.",
            path="/docs",
            render_plugins=[PackagedSwaggerUI(path="/")],
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(type="http", scheme="bearer", description="API key")
                }
            ),
            security=[{"apiKey": []}],
        )
    allow = _AllowHeader()
    app = Litestar(
        route_handlers=[
            MessagesController,
            StatsController,
            SuppressionsController,
            WebhooksController,
            *OPS_ROUTES,
            *CONSOLE_ROUTES,
            *asset_routes(swagger_ui),
            DnsController,
            mta_sts_policy_file,
            DomainsController,
            ProvidersController,
            *webhook_routes(gateway),
            *plugin_routes(gateway),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        before_send=[allow.correct],
        middleware=[http_metrics(gateway.metrics)],
        openapi_config=openapi,
        request_max_body_size=gateway.config.http.max_body_size,
        lifespan=[api_lifespan],
        state=State({"api": api}),
        logging_config=None,
    )
    allow.learn(app)
    if openapi is not None:
        streams = {s for t in gateway.config.tenants.values() for s in t.streams}
        complete_document(app.openapi_schema, declared_bodies(app.routes), sorted(streams))
    return app


class _AllowHeader:
    """``Allow`` on automatic ``OPTIONS`` answers lists every method of the path. Litestar
    builds that header when a path gets its first handler and keeps it when more are added
    (``OPTIONS /v1/messages`` said ``GET, OPTIONS``), so it is rewritten on the way out."""

    def __init__(self) -> None:
        self.methods: dict[str, bytes] = {}

    def learn(self, app: Litestar) -> None:
        for route in app.routes:
            if isinstance(route, HTTPRoute):
                self.methods[route.path_format] = ", ".join(sorted(route.methods)).encode()

    async def correct(self, message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
            return
        allow = self.methods.get(str(scope.get("path_template", "")))
        if allow is not None:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
            message["headers"] = [*headers, (b"allow", allow)]


async def _purge_forever(api: ApiContext) -> None:
    while True:
        await asyncio.sleep(PURGE_INTERVAL)
        try:
            purged = await api.store.purge_idempotency(api.clock.now())
        except Exception:
            log.exception("purging idempotency keys failed; will try again")
            continue
        if purged:
            log.info("purged %d expired idempotency keys", purged)


def plugin_routes(gateway: Gateway) -> list[Any]:
    """Route handlers contributed by plugins through ``gateway_register_routes``."""
    routes: list[Any] = []
    for contributed in gateway.pm.hook.gateway_register_routes(gateway=gateway):
        routes.extend(contributed)
    return routes
