"""Prometheus metrics: one registry per ``Gateway`` (so tests and workers never share one).

Counters move as things happen — accepted messages (``Ingress`` observer), delivery outcomes
and normalized events (``gateway_event``), delivery latency and final states
(``gateway_delivery_result``), SMTP sessions and refusals (``SessionTracker``), HTTP requests
(the API's middleware) and rate-limit refusals, webhook POSTs (the sender webhook worker); the
client library's process and platform collectors are registered too. Gauges that describe
shared state — queue depth and age, breakers, warming caps, the webhook queue — are read from
the store and plugins when ``/metrics`` is scraped (:meth:`GatewayMetrics.refresh`), as are the
supervisor's worker restarts. With several workers, each serves its own counters; the gauges
read from shared state are the same on
every worker.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from gateway.events import Event
from gateway.message import Delivery, DeliveryStatus, Message
from gateway.plugin_manager import hookimpl
from gateway.supervisor import read_restarts

log = logging.getLogger("gateway.ops.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4"
"""The classic text format every Prometheus reads (the HTTP layer adds ``charset=utf-8``)."""
RECENT_EVENTS = 200
BREAKER_STATES = ("closed", "half_open", "open")
_DELIVERY_EVENTS = frozenset({"delivered", "deferred", "bounced"})
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)


_MAX_CHILDREN = 10_000


class GatewayMetrics:
    """The gateway's metrics and the hook implementations that move them."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        # Every counter's `_created` twin only repeats the process start time.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.http_requests = Counter(
            "gateway_http_requests",
            "HTTP requests answered, by method, route (its path template) and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "gateway_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route",
            ["method", "route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.http_rate_limited = Counter(
            "gateway_http_rate_limited",
            "Requests refused with 429 by an API key's rate limit, by tenant",
            ["tenant"],
            registry=r,
        )
        self.smtp_refusals = Counter(
            "gateway_smtp_refusals",
            "SMTP replies refusing something (4xx/5xx), by listener and reason",
            ["listener", "reason"],
            registry=r,
        )
        self.accepted = Counter(
            "gateway_messages_accepted",
            "Messages accepted (durably spooled), by tenant, stream and entry point",
            ["tenant", "stream", "source"],
            registry=r,
        )
        self.recipients = Counter(
            "gateway_recipients_accepted",
            "Deliveries created by accepted messages (one per recipient)",
            ["tenant"],
            registry=r,
        )
        self.deliveries = Counter(
            "gateway_deliveries",
            "Delivery outcomes by tenant, stream, route (provider) and status",
            ["tenant", "stream", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "gateway_delivery_latency_seconds",
            "From acceptance to delivery, per delivered recipient",
            ["tenant", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "gateway_events",
            "Normalized events (delivery results, provider webhooks, tracking) by stream and type",
            ["tenant", "stream", "type"],
            registry=r,
        )
        self.webhook_posts = Counter(
            "gateway_webhook_posts",
            "Event webhook requests to senders' endpoints, by outcome",
            ["tenant", "endpoint", "outcome"],
            registry=r,
        )
        self.smtp_sessions = Counter(
            "gateway_smtp_sessions", "SMTP sessions opened", ["listener"], registry=r
        )
        self.smtp_sessions_open = Gauge(
            "gateway_smtp_sessions_open", "SMTP sessions open now", ["listener"], registry=r
        )
        self.smtp_limits = Counter(
            "gateway_smtp_limit_hits",
            "SMTP connections refused and sessions ended by a limit (connection counts and rates, "
            "timeouts, junk commands, AUTH throttling), by listener and limit",
            ["listener", "limit"],
            registry=r,
        )
        self.queue = Gauge(
            "gateway_queue_deliveries", "Deliveries in the store by status", ["status"], registry=r
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Deliveries not finished yet (queued, deferred or being sent); final ones excluded",
            registry=r,
        )
        self.queue_oldest = Gauge(
            "gateway_queue_oldest_age_seconds",
            "Age of the oldest message with a delivery still waiting (0 when none)",
            registry=r,
        )
        self.breaker = Gauge(
            "gateway_provider_breaker_state",
            "Circuit breaker state per provider (1 for the current state)",
            ["provider", "state"],
            registry=r,
        )
        self.warming_cap = Gauge(
            "gateway_warming_cap", "Today's warming cap", ["kind", "name"], registry=r
        )
        self.warming_sent = Gauge(
            "gateway_warming_sent",
            "Sent today against the warming cap",
            ["kind", "name"],
            registry=r,
        )
        self.webhook_queue = Gauge(
            "gateway_webhook_events",
            "Event webhooks in the store by status",
            ["status"],
            registry=r,
        )
        self.up = Gauge("gateway_store_up", "1 when the last store read succeeded", registry=r)
        self.worker_restarts = Gauge(
            "gateway_worker_restarts",
            "Workers the supervisor replaced after they died unexpectedly, since it started,"
            " by worker slot",
            ["worker"],
            registry=r,
        )
        self._routes: dict[int, str] = {}
        self._children: dict[tuple[Any, ...], Any] = {}
        self.recent_events: collections.deque[Event] = collections.deque(maxlen=RECENT_EVENTS)
        """The latest events this worker saw, newest last (the console shows them)."""

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: ``labels()`` checks and locks on every
        call, and these move per message or per connection."""
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= _MAX_CHILDREN:
                self._children.clear()
            child = self._children[key] = metric.labels(*values)
        return child

    # --- moved by what happens -----------------------------------------------------------------

    def message_accepted(self, message: Message, recipients: Sequence[str]) -> None:
        self._child(self.accepted, message.tenant, message.stream, message.source).inc()
        self._child(self.recipients, message.tenant).inc(len(recipients))

    def session_changed(self, listener: str, open_sessions: int, opened: bool) -> None:
        if opened:
            self._child(self.smtp_sessions, listener).inc()
        self._child(self.smtp_sessions_open, listener).set(open_sessions)

    def smtp_limit_hit(self, listener: str, limit: str) -> None:
        self.smtp_limits.labels(listener, limit).inc()

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(method, route).observe(seconds)

    def rate_limited(self, tenant: str) -> None:
        self.http_rate_limited.labels(tenant).inc()

    def smtp_refused(self, listener: str, reason: str) -> None:
        """One refusal; ``reason`` is a short stable name (by default the reply's codes,
        ``smtp_reply_reason``), so callers with their own vocabulary can plug in."""
        self.smtp_refusals.labels(listener, reason).inc()

    def smtp_refused_reply(self, listener: str, reply: str) -> None:
        self.smtp_refused(listener, smtp_reply_reason(reply))

    def webhook_posted(self, tenant: str, endpoint: str, outcome: str) -> None:
        self.webhook_posts.labels(tenant, endpoint, outcome).inc()

    @hookimpl
    def gateway_event(self, event: Event) -> None:
        self.recent_events.append(event)
        self._child(self.events, event.tenant, event.stream, event.type).inc()
        if event.type in _DELIVERY_EVENTS and event.delivery_id:
            route = event.provider or "-"
            self._child(self.deliveries, event.tenant, event.stream, route, event.type).inc()
            if event.type == "delivered":
                # gateway_delivery_result (next) knows the message's age but not the route.
                self._routes[event.delivery_id] = event.provider or "-"

    @hookimpl
    def gateway_delivery_result(self, message: Message, delivery: Delivery, status: str) -> None:
        route = self._routes.pop(delivery.id, None)
        if status == DeliveryStatus.DELIVERED.value:
            age = max(0.0, self.gateway.clock.now() - message.created_at)
            self._child(self.latency, message.tenant, route or delivery.provider or "-").observe(
                age
            )
        elif status in (DeliveryStatus.EXPIRED.value, DeliveryStatus.SKIPPED.value):
            route = delivery.provider or "-"
            self.deliveries.labels(message.tenant, message.stream, route, status).inc()

    # --- read when scraped ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Update the gauges from the store, the router and the warming plugin."""
        store = self.gateway.store
        try:
            counts = await store.counts()
            oldest = await store.oldest_waiting()
            webhooks = await store.webhook_counts()
        except Exception as e:
            log.warning("metrics: reading the store failed: %s", e)
            self.up.set(0)
        else:
            self.up.set(1)
            for status, n in counts.items():
                self.queue.labels(status.value).set(n)
            self.queue_depth.set(sum(n for s, n in counts.items() if not s.is_terminal))
            now = self.gateway.clock.now()
            self.queue_oldest.set(max(0.0, now - oldest) if oldest is not None else 0.0)
            for wh_status, n in webhooks.items():
                self.webhook_queue.labels(wh_status).set(n)
        for worker, restarts in read_restarts(self.gateway.config.data_dir).items():
            self.worker_restarts.labels(str(worker)).set(restarts)
        for provider, state in breaker_states(self.gateway).items():
            for candidate in BREAKER_STATES:
                self.breaker.labels(provider, candidate).set(1 if state == candidate else 0)
        for kind, name, cap, sent in warming_usage(self.gateway):
            self.warming_cap.labels(kind, name).set(cap)
            self.warming_sent.labels(kind, name).set(sent)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def breaker_states(gateway: Any) -> dict[str, str]:
    """Provider → breaker state from the router when there is one; else every configured
    provider of the route counts as ``closed``."""
    router = getattr(gateway, "router", None)
    states = getattr(router, "breaker_states", None)
    if callable(states):
        try:
            found: dict[str, str] = dict(states())
            return found
        except Exception:
            log.exception("router.breaker_states() failed")
    return dict.fromkeys(gateway.config.delivery.providers, "closed")


def warming_usage(gateway: Any) -> list[tuple[str, str, int, int]]:
    """``(kind, name, cap today, sent today)`` from the warming plugin, when it is loaded."""
    warming = gateway.plugin_state.get("warming")
    snapshot = getattr(warming, "usage_snapshot", None)
    if not callable(snapshot):
        return []
    try:
        return [(str(k), str(n), int(c), int(s)) for k, n, c, s in snapshot()]
    except Exception:
        log.exception("warming usage_snapshot() failed")
        return []


def smtp_reply_reason(reply: str) -> str:
    """The default refusal reason of an SMTP reply: its basic and enhanced codes
    (``"550 5.7.1"``), a small, stable label set whatever the reply's text says."""
    parts = reply.split(None, 2)
    if len(parts) >= 2 and parts[1][:1] in ("4", "5") and parts[1].count(".") == 2:
        return f"{parts[0][:3]} {parts[1]}"
    return reply[:3]
