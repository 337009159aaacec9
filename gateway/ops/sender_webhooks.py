"""Event webhooks to senders: each tenant's endpoints get the events they subscribed to.

``gateway_event`` turns an event into one stored :class:`WebhookEvent` per subscribed endpoint
(durable before the hook returns, in the store every worker shares). The worker loop claims due
events, POSTs the JSON body signed per Standard Webhooks — ``webhook-id`` (the same on every
retry and replay, so receivers can de-duplicate), ``webhook-timestamp`` (when this attempt was
signed) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` with
the endpoint's ``whsec_`` secret, computed by the ``standardwebhooks`` reference library) — and
records every attempt in the delivery log. A 2xx answer delivers the event; anything else
(another status, a refused connection, a timeout) retries on ``[webhooks] retry_schedule``
until ``max_age`` has passed since the event, then marks it ``failed``. Operators and senders
replay an event (``POST /v1/webhooks/{id}/replay``, ``gateway webhooks replay``): it becomes
due again, with its log kept.

Body::

    {"type": "email.delivered", "timestamp": "2026-11-23T22:00:00.123Z",
     "data": {"message_id": "...", "recipient": "...", "tenant": "...", ...}}
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from standardwebhooks.webhooks import Webhook

from gateway import __version__
from gateway.config import WebhookEndpointSection
from gateway.events import SCHEMA_VERSION, ContactEvent, Event
from gateway.message import new_message_id
from gateway.plugin_manager import hookimpl
from gateway.store.base import WebhookAttempt, WebhookEvent

if TYPE_CHECKING:
    from gateway.server import Gateway

log = logging.getLogger("gateway.webhooks")

IDLE_POLL_SECONDS = 1.0
LEASE_MARGIN = 30.0
"""A claimed event is due again this long after the request timeout, should we die mid-send."""


def event_type_name(kind: str) -> str:
    """The ``type`` in the body: ``email.<kind>`` (Standard Webhooks' ``noun.verb`` style);
    contact events are already named ``contact.<kind>``."""
    return kind if kind.startswith("contact.") else f"email.{kind}"


def _iso(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_body(event: Event) -> bytes:
    """The JSON body for ``event`` (compact, keys in a fixed order; ``docs/events.md``)."""
    data: dict[str, Any] = {
        "tenant": event.tenant,
        "stream": event.stream,
        "message_id": event.message_id,
        "recipient": event.recipient,
        "provider": event.provider,
        "sending_domain": event.sending_domain,
        "detail": event.detail,
    }
    optional: dict[str, Any] = {
        "bounce": event.bounce,
        "url": event.url,
        "classification": event.classification,
        "signals": list(event.signals),
        "tags": list(event.tags),
        "metadata": event.metadata,
        "event_id": event.event_id,
        "data": event.data,
    }
    data.update((k, v) for k, v in optional.items() if v)
    body = {
        "type": event_type_name(event.type),
        "version": SCHEMA_VERSION,
        "id": event.id,
        "timestamp": _iso(event.at),
        "data": data,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def contact_event_body(event: ContactEvent) -> bytes:
    """The JSON body for a contact event (``contact.<type>``)."""
    data: dict[str, Any] = {
        "tenant": event.tenant,
        "contact_id": event.contact_id,
        "email": event.email,
        "source": event.source,
    }
    if event.list_id is not None:
        data["list_id"] = event.list_id
    if event.topic_id is not None:
        data["topic_id"] = event.topic_id
    if event.data:
        data["data"] = event.data
    body = {
        "type": f"contact.{event.type}",
        "version": SCHEMA_VERSION,
        "timestamp": _iso(event.at),
        "data": data,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def signature_headers(secret: str, event_id: str, timestamp: float, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one request."""
    signed_at = dt.datetime.fromtimestamp(int(timestamp), dt.UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": Webhook(secret).sign(event_id, signed_at, body.decode()),
    }


def subscribed(endpoint: WebhookEndpointSection, kind: str) -> bool:
    return endpoint.enabled and (not endpoint.events or kind in endpoint.events)


class WebhookSender:
    """Queues events for endpoints (a ``gateway_event`` hook) and delivers them (``run``)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._wake = asyncio.Event()
        self._stopping = False
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._client: httpx.AsyncClient | None = None

    @property
    def settings(self) -> Any:
        return self.gateway.config.webhooks

    def endpoint(self, tenant: str, name: str) -> WebhookEndpointSection | None:
        section = self.gateway.config.tenants.get(tenant)
        return section.webhooks.get(name) if section is not None else None

    def wake(self) -> None:
        """Something may be due now (a new event, a replay)."""
        self._wake.set()

    # --- queueing -------------------------------------------------------------------------------

    @hookimpl
    async def gateway_event(self, event: Event) -> None:
        await self.queue(event.tenant, event.type, lambda: event_body(event))

    @hookimpl
    async def gateway_contact_event(self, event: ContactEvent) -> None:
        kind = f"contact.{event.type}"
        await self.queue(event.tenant, kind, lambda: contact_event_body(event))

    async def queue(self, tenant_name: str, kind: str, body: Callable[[], bytes]) -> None:
        """Queue an event of ``kind`` (one of ``WEBHOOK_EVENT_TYPES``) for the tenant's
        endpoints that subscribe to it; ``body`` is only built when one does (the automation
        plugin's ``flow.*`` events come this way)."""
        tenant = self.gateway.config.tenants.get(tenant_name)
        if tenant is None or not tenant.webhooks:
            return
        targets = [n for n, e in tenant.webhooks.items() if subscribed(e, kind)]
        if not targets:
            return
        payload = body()
        now = self.gateway.clock.now()
        await self.gateway.store.enqueue_webhooks(
            [
                WebhookEvent(
                    id=f"msg_{new_message_id()}",
                    tenant=tenant_name,
                    endpoint=name,
                    type=kind,
                    payload=payload,
                    created_at=now,
                    next_attempt_at=now,
                    updated_at=now,
                )
                for name in targets
            ]
        )
        self._wake.set()

    # --- delivering -----------------------------------------------------------------------------

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.timeout,
                follow_redirects=False,
                headers={"user-agent": f"esp-gateway/{__version__} (webhooks)"},
                trust_env=False,
            )
        return self._client

    async def run_once(self) -> int:
        """Send every event due now and wait for the answers; how many were sent (tests, CLI)."""
        total = 0
        while True:
            batch = await self._claim(self.settings.concurrency)
            if not batch:
                return total
            total += len(batch)
            await asyncio.gather(*(self.deliver(e) for e in batch))

    async def _claim(self, limit: int) -> list[WebhookEvent]:
        now = self.gateway.clock.now()
        return await self.gateway.store.claim_webhooks(
            now, limit, now + self.settings.timeout + LEASE_MARGIN
        )

    async def run(self) -> None:
        """Deliver until :meth:`stop`, at most ``concurrency`` requests at a time."""
        while not self._stopping:
            free = self.settings.concurrency - len(self._in_flight)
            batch: list[WebhookEvent] = []
            if free > 0:
                try:
                    batch = await self._claim(free)
                except Exception as e:
                    log.warning("claiming webhook events failed: %s; retrying", e)
            for event in batch:
                task = asyncio.create_task(self.deliver(event))
                self._in_flight.add(task)
                task.add_done_callback(self._finished)
            if batch and len(batch) == free:
                await asyncio.sleep(0)
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_SECONDS)
            except TimeoutError:
                pass

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._in_flight.discard(task)
        self._wake.set()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; let requests in flight finish for up to ``grace`` seconds. Events cut
        off stay claimed until their lease passes, then any worker sends them."""
        self._stopping = True
        self._wake.set()
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=grace)
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def deliver(self, event: WebhookEvent) -> WebhookAttempt:
        """POST one event, log the attempt, and schedule a retry or give up."""
        endpoint = self.endpoint(event.tenant, event.endpoint)
        now = self.gateway.clock.now()
        if endpoint is None or not endpoint.enabled:
            attempt = WebhookAttempt(
                at=now, status_code=0, outcome="failed", detail="endpoint is no longer configured"
            )
            await self.gateway.store.record_webhook_attempt(event.id, attempt)
            return attempt
        status, detail, duration = await self._post(endpoint, event, now)
        if 200 <= status < 300:
            attempt = WebhookAttempt(
                at=now, status_code=status, outcome="delivered", detail=detail, duration=duration
            )
            next_at = 0.0
        else:
            next_at = self._next_attempt(event, now)
            attempt = WebhookAttempt(
                at=now,
                status_code=status,
                outcome="pending" if next_at else "failed",
                detail=detail,
                duration=duration,
            )
        try:
            await self.gateway.store.record_webhook_attempt(
                event.id, attempt, next_attempt_at=next_at
            )
        except Exception:
            log.exception(
                "recording webhook attempt for %s failed; it will be sent again", event.id
            )
        metrics = getattr(self.gateway, "metrics", None)
        if metrics is not None:
            metrics.webhook_posted(event.tenant, event.endpoint, attempt.outcome)
        log.info(
            "webhook %s %s to %s/%s: %s %s",
            event.id,
            event_type_name(event.type),
            event.tenant,
            event.endpoint,
            attempt.outcome,
            detail,
        )
        return attempt

    async def _post(
        self, endpoint: WebhookEndpointSection, event: WebhookEvent, now: float
    ) -> tuple[int, str, float]:
        headers = {
            "content-type": "application/json",
            **signature_headers(endpoint.secret, event.id, now, event.payload),
        }
        started = time.perf_counter()
        try:
            response = await self.client().post(
                endpoint.url, content=event.payload, headers=headers
            )
        except httpx.HTTPError as e:
            return 0, f"{type(e).__name__}: {e}"[:300], time.perf_counter() - started
        duration = time.perf_counter() - started
        return response.status_code, f"HTTP {response.status_code}", duration

    def _next_attempt(self, event: WebhookEvent, now: float) -> float:
        """When to try again, or 0.0 when the event is past ``max_age`` by then (give up)."""
        delays = self.settings.retry_delays
        wait = delays[min(event.attempts, len(delays) - 1)]
        next_at: float = now + wait
        if next_at > event.created_at + self.settings.max_age_seconds:
            return 0.0
        return next_at


def webhook_event_view(event: WebhookEvent) -> dict[str, Any]:
    """An event as the API and CLI show it (the body decoded)."""
    view: dict[str, Any] = msgspec.to_builtins(event)
    view["payload"] = json.loads(event.payload)
    return view
