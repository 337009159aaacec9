"""Operations over HTTP: ``/healthz``, ``/readyz``, ``/metrics`` (for the operator's tooling,
no API key), and the sender-facing event webhooks under ``/v1/webhooks``.

``/readyz`` answers 200 when every check passes and 503 otherwise, with each check's detail
either way, so a load balancer and a person read the same answer.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, head, post
from litestar.params import FromPath, FromQuery, QueryParameter

from gateway.api.auth import bearer_token, requires
from gateway.api.context import ApiContext
from gateway.api.problems import Problem
from gateway.config import is_loopback
from gateway.ops.health import Readiness, readiness
from gateway.ops.metrics import CONTENT_TYPE
from gateway.ops.sender_webhooks import webhook_event_view
from gateway.store.base import WebhookAttempt, WebhookEvent


class Health(msgspec.Struct, kw_only=True):
    status: str
    version: str
    worker: int


@get("/healthz", include_in_schema=False, cache_control=None)
async def healthz(request: Request[Any, Any, Any]) -> Health:
    """The process is alive and its event loop answers."""
    from gateway import __version__

    return Health(status="ok", version=__version__, worker=ApiContext.of(request).gateway.worker)


@head("/healthz", include_in_schema=False, cache_control=None)
async def healthz_head() -> None:
    """``HEAD /healthz``: the same check for probes that only look at the status."""


@get("/readyz", include_in_schema=False)
async def readyz(request: Request[Any, Any, Any]) -> Response[Readiness]:
    """Ready for traffic: spool writable, store reachable, a route open, listeners bound."""
    result = await readiness(ApiContext.of(request).gateway)
    return Response(result, status_code=200 if result.ready else 503)


@get("/metrics", include_in_schema=False)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text exposition of this worker's registry."""
    gateway = ApiContext.of(request).gateway
    _check_metrics_access(request, gateway.config.http.metrics_token)
    await gateway.metrics.refresh()
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)


def _check_metrics_access(request: Request[Any, Any, Any], token: str) -> None:
    if token:
        given = bearer_token(request.headers.get("authorization")) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Problem(
                401,
                "unauthorized",
                "Unauthorized",
                "send http.metrics_token as 'Authorization: Bearer <token>'",
                field="Authorization",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    elif not is_loopback(request.client.host if request.client else ""):
        raise Problem(
            403, "forbidden", "Forbidden", "set http.metrics_token to scrape from elsewhere"
        )


OPS_ROUTES = [healthz, healthz_head, readyz, metrics]


# --- /v1/webhooks: a sender's endpoints, their events and delivery log, replay ------------------


class WebhookEndpointView(msgspec.Struct, kw_only=True):
    name: str
    url: str
    events: list[str]
    """Subscribed event types; empty means all."""
    enabled: bool


class WebhookEventView(msgspec.Struct, kw_only=True):
    id: str
    """The ``webhook-id`` header: the same on every retry and replay."""
    endpoint: str
    type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str
    payload: dict[str, Any]
    log: list[WebhookAttempt] | None = None
    """Every attempt, oldest first (in the single-event view)."""


def _view(event: WebhookEvent, log: list[WebhookAttempt] | None = None) -> WebhookEventView:
    raw = webhook_event_view(event)
    return WebhookEventView(
        id=event.id,
        endpoint=event.endpoint,
        type=event.type,
        status=event.status,
        attempts=event.attempts,
        created_at=event.created_at,
        next_attempt_at=event.next_attempt_at,
        last_error=event.last_error,
        payload=raw["payload"],
        log=log,
    )


def _not_found(event_id: str) -> Problem:
    return Problem(404, "not-found", "Not found", f"no webhook event {event_id!r}", field="id")


class WebhooksController(Controller):
    path = "/v1/webhooks"
    tags = ["webhooks"]

    @get("/", guards=[requires("read")], summary="The tenant's webhook endpoints")
    async def endpoints(self, request: Request[Any, Any, Any]) -> list[WebhookEndpointView]:
        api = ApiContext.of(request)
        tenant = api.config.tenants.get(request.state.api_key.tenant)
        webhooks = tenant.webhooks if tenant is not None else {}
        return [
            WebhookEndpointView(name=n, url=e.url, events=list(e.events), enabled=e.enabled)
            for n, e in webhooks.items()
        ]

    @get("/events", guards=[requires("read")], summary="Webhook events, newest first")
    async def events(
        self,
        request: Request[Any, Any, Any],
        status: FromQuery[Literal["pending", "delivered", "failed"] | None] = None,
        endpoint: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    ) -> list[WebhookEventView]:
        api = ApiContext.of(request)
        found = await api.store.list_webhook_events(
            request.state.api_key.tenant,
            status=status,
            endpoint=endpoint,
            before_id=before,
            limit=limit,
        )
        return [_view(e) for e in found]

    @get("/events/{event_id:str}", guards=[requires("read")], summary="One event and its log")
    async def event(
        self, request: Request[Any, Any, Any], event_id: FromPath[str]
    ) -> WebhookEventView:
        api = ApiContext.of(request)
        found = await api.store.webhook_event(event_id)
        if found is None or found[0].tenant != request.state.api_key.tenant:
            raise _not_found(event_id)
        return _view(*found)

    @post(
        "/{event_id:str}/replay",
        guards=[requires("send")],
        status_code=202,
        summary="Send an event again (whatever its state); its log is kept",
    )
    async def replay(
        self, request: Request[Any, Any, Any], event_id: FromPath[str]
    ) -> WebhookEventView:
        api = ApiContext.of(request)
        found = await api.store.webhook_event(event_id)
        if found is None or found[0].tenant != request.state.api_key.tenant:
            raise _not_found(event_id)
        replayed = await api.store.replay_webhook(event_id, api.clock.now())
        if replayed is None:
            raise _not_found(event_id)
        api.gateway.webhooks.wake()
        return _view(replayed)
