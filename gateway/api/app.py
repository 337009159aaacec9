"""``create_app(gateway)``: the litestar application for one gateway worker.

Controllers (one per resource, Structs beside them) are mounted under ``/v1``; errors go
through the one map in ``problems``; the OpenAPI 3.1 document is at ``/docs/openapi.json``
with an interactive page at ``/docs``. Request bodies are decoded by the handlers themselves
(strictly, with errors naming the field, and ``POST /v1/messages`` also takes
``message/rfc822``), so their schemas are added to the generated document here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import msgspec
from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
)

from gateway import __version__
from gateway.api.assets import PackagedSwaggerUI, asset_routes, load_swagger_ui
from gateway.api.console import CONSOLE_ROUTES
from gateway.api.context import ApiContext
from gateway.api.dns import DnsController, mta_sts_policy_file
from gateway.api.domains import DomainsController
from gateway.api.http_metrics import http_metrics
from gateway.api.messages import BatchRequest, MessagesController, SendRequest
from gateway.api.ops import OPS_ROUTES, WebhooksController
from gateway.api.problems import EXCEPTION_HANDLERS, MEDIA_TYPE, ProblemDetail
from gateway.api.providers import ProvidersController
from gateway.api.stats import StatsController
from gateway.api.suppressions import SuppressionAdd, SuppressionsController
from gateway.api.webhooks import webhook_routes

if TYPE_CHECKING:
    from gateway.server import Gateway

log = logging.getLogger("gateway.api")

PURGE_INTERVAL = 3600.0
"""How often expired idempotency keys are deleted."""

# (path, request Struct or None for a plain string body, extra media types)
_BODIES: list[tuple[str, type[msgspec.Struct] | None, tuple[str, ...]]] = [
    ("/v1/messages", SendRequest, ("message/rfc822",)),
    ("/v1/messages/batch", BatchRequest, ()),
    ("/v1/suppressions", SuppressionAdd, ()),
    ("/v1/suppressions/import", None, ("text/csv",)),
]


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
            await api.renderers.close()

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
        middleware=[http_metrics(gateway.metrics)],
        openapi_config=openapi,
        request_max_body_size=gateway.config.http.max_body_size,
        lifespan=[api_lifespan],
        state=State({"api": api}),
        logging_config=None,
    )
    if openapi is not None:
        _document_bodies(app)
    return app


_ERRORS = {
    "400": "Malformed request (invalid JSON, bad header or parameter)",
    "401": "No valid API key",
    "403": "The key lacks the scope this endpoint needs",
    "413": "Request or message too large",
    "422": "A field is invalid; `field` names it",
    "429": "Rate limit reached; see Retry-After",
    "503": "Local fault, nothing was stored; retry after Retry-After",
}


def _document_bodies(app: Litestar) -> None:
    """Add the hand-decoded request bodies (and their Structs) and the problem responses to
    the OpenAPI document."""
    document = app.openapi_schema
    structs: list[type[msgspec.Struct]] = [ProblemDetail]
    structs += [struct for _, struct, _ in _BODIES if struct is not None]
    _, schemas = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")
    # msgspec's JSON Schema is valid OpenAPI 3.1; litestar serializes plain dicts as they are.
    document.components.schemas.update(cast(dict[str, Schema], schemas))
    for path, struct, extra in _BODIES:
        item = document.paths[path] if document.paths else None
        operation = item.post if item is not None else None
        if operation is None:
            raise RuntimeError(f"no POST {path} to document")
        content: dict[str, OpenAPIMediaType] = {}
        if struct is not None:
            ref = Reference(ref=f"#/components/schemas/{struct.__name__}")
            content["application/json"] = OpenAPIMediaType(schema=ref)
        for media_type in extra:
            content[media_type] = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
        operation.request_body = RequestBody(content=content, required=True)
    problem = OpenAPIMediaType(schema=Reference(ref="#/components/schemas/ProblemDetail"))
    for item in (document.paths or {}).values():
        for operation in (item.get, item.post, item.delete):
            if operation is None or operation.responses is None:
                continue
            for status, description in _ERRORS.items():
                operation.responses[status] = OpenAPIResponse(
                    description=description, content={MEDIA_TYPE: problem}
                )


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
