# ruff: noqa: E501  (the page template below keeps its HTML lines whole)
"""The operator console: one server-rendered page (Jinja2, no build step) at ``/console``.

It shows the queue, routes and their breakers, readiness, domains with their warming caps, SMTP
sessions, the counters since start and the latest events; a few lines of plain JavaScript
fetch ``/console/data`` every few seconds and update the numbers in place. Access needs an API
key with the ``admin`` scope: HTTP Basic authentication with the key as the password (any user
name; browsers ask for it) or ``Authorization: Bearer``. The page shows gateway-wide figures
and the events of the key's own tenant only.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

import jinja2
from litestar import Request, Response, get
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gateway import __version__
from gateway.api.auth import bearer_token
from gateway.api.context import ApiContext
from gateway.api.problems import Problem
from gateway.ops.health import readiness
from gateway.ops.metrics import breaker_states, warming_usage

REFRESH_SECONDS = 2.0


def _presented_key(authorization: str | None) -> str | None:
    token = bearer_token(authorization)
    if token is not None or not authorization:
        return token
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        _, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password or None


async def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    api: ApiContext = connection.app.state.api
    presented = _presented_key(connection.headers.get("authorization"))
    key = api.keys.find(presented) if presented else None
    if key is None or not key.allows("admin"):
        raise Problem(
            401,
            "unauthorized",
            "Unauthorized",
            "the console needs an API key with the admin scope (as the Basic password)",
            field="Authorization",
            headers={"WWW-Authenticate": 'Basic realm="gateway console", charset="UTF-8"'},
        )
    connection.state.api_key = key


async def snapshot(api: ApiContext, tenant: str) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data."""
    gateway = api.gateway
    metrics = gateway.metrics
    await metrics.refresh()
    ready = await readiness(gateway)
    queue = {labels["status"]: int(v) for labels, v in _samples(metrics.queue)}
    webhooks = {labels["status"]: int(v) for labels, v in _samples(metrics.webhook_queue)}
    totals: dict[str, float] = {}
    for labels, value in _samples(metrics.deliveries, "_total"):
        totals[labels["status"]] = totals.get(labels["status"], 0) + value
    stats = {s: int(totals.get(s, 0)) for s in ("delivered", "deferred", "bounced", "expired")}
    stats["accepted"] = int(sum(v for _, v in _samples(metrics.accepted, "_total")))
    routes = [{"name": name, "breaker": state} for name, state in breaker_states(gateway).items()]
    stats_by_route = getattr(getattr(gateway, "router", None), "provider_stats", None)
    if callable(stats_by_route):
        for route in routes:
            route.update(stats_by_route().get(route["name"], {}))
    usage = warming_usage(gateway)
    domains = []
    for name in sorted(set(gateway.config.domains) | {n for k, n, _, _ in usage if k == "domain"}):
        caps = [(cap, sent) for kind, n, cap, sent in usage if kind == "domain" and n == name]
        domains.append(
            {
                "name": name,
                "cap": caps[0][0] if caps else None,
                "sent": caps[0][1] if caps else None,
                "health": _domain_health(gateway, name),
            }
        )
    return {
        "version": __version__,
        "worker": gateway.worker,
        "now": dt.datetime.fromtimestamp(api.clock.now(), dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "ready": ready.ready,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in ready.checks],
        "queue": queue,
        "oldest_age": round(metrics.queue_oldest._value.get(), 1),
        "stats": stats,
        "smtp_open": gateway.sessions.open_sessions,
        "smtp_total": sum(gateway.sessions.total.values()),
        "routes": routes,
        "domains": domains,
        "ips": [
            {"name": n, "cap": cap, "sent": sent} for kind, n, cap, sent in usage if kind == "ip"
        ],
        "webhooks": webhooks,
        "events": [
            {
                "at": dt.datetime.fromtimestamp(e.at, dt.UTC).strftime("%H:%M:%S"),
                "type": e.type,
                "recipient": e.recipient,
                "provider": e.provider,
                "message_id": e.message_id,
                "detail": e.detail[:120],
            }
            for e in reversed(metrics.recent_events)
            if e.tenant == tenant
        ][:25],
    }


def _samples(metric: Any, suffix: str = "") -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in metric.collect()
        for s in family.samples
        if s.name == family.name + suffix
    ]


def _domain_health(gateway: Any, domain: str) -> str:
    warming = gateway.plugin_state.get("warming")
    health = getattr(warming, "domain_health", None)
    if not callable(health):
        return ""
    try:
        return str(health(domain))
    except Exception:
        return "unknown"


@get("/console", guards=[admin_only], include_in_schema=False)
async def console(request: Request[Any, Any, Any]) -> Response[str]:
    api = ApiContext.of(request)
    data = await snapshot(api, request.state.api_key.tenant)
    page = _TEMPLATE.render(data=data, tenant=request.state.api_key.tenant, refresh=REFRESH_SECONDS)
    return Response(
        page,
        media_type="text/html; charset=utf-8",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline' 'self';"
            " style-src 'unsafe-inline'; frame-ancestors 'none'",
        },
    )


@get("/console/data", guards=[admin_only], include_in_schema=False)
async def console_data(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    api = ApiContext.of(request)
    data = await snapshot(api, request.state.api_key.tenant)
    return Response(data, headers={"Cache-Control": "no-store"})


CONSOLE_ROUTES = [console, console_data]

_TEMPLATE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Gateway console</title>
<link rel="icon" type="image/svg+xml" href="/favicon.ico">
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em} h2{font-size:1.05em;margin:1.2em 0 .4em}
.grid{display:flex;flex-wrap:wrap;gap:.8em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:8em}
.card b{display:block;font-size:1.6em}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
.ok{color:#17702e}.bad{color:#b3261e} .muted{color:#777}
</style></head>
<body>
<h1>Gateway console</h1>
<div class="muted">version {{ data.version }}, worker {{ data.worker }}, tenant {{ tenant }} —
updated <span id="now">{{ data.now }}</span> UTC, every {{ refresh }}s</div>
<h2>Readiness: <span id="ready" class="{{ 'ok' if data.ready else 'bad' }}">{{ 'ready' if data.ready else 'NOT READY' }}</span></h2>
<table id="checks">{% for c in data.checks %}<tr><th>{{ c.name }}</th><td class="{{ 'ok' if c.ok else 'bad' }}">{{ c.detail }}</td></tr>{% endfor %}</table>
<h2>Queue</h2>
<div class="grid">
{% for s in ["queued", "deferred", "sending", "delivered", "bounced", "expired"] %}
<div class="card">{{ s }}<b data-queue="{{ s }}">{{ data.queue.get(s, 0) }}</b></div>
{% endfor %}
<div class="card">oldest waiting (s)<b id="oldest">{{ data.oldest_age }}</b></div>
</div>
<h2>Since start (this worker)</h2>
<div class="grid">
{% for s in ["accepted", "delivered", "deferred", "bounced", "expired"] %}
<div class="card">{{ s }}<b data-stat="{{ s }}">{{ data.stats[s] }}</b></div>
{% endfor %}
<div class="card">SMTP sessions open<b id="smtp-open">{{ data.smtp_open }}</b></div>
<div class="card">SMTP sessions<b id="smtp-total">{{ data.smtp_total }}</b></div>
</div>
<h2>Routes and breakers</h2>
<table id="routes"><tr><th>provider</th><th>breaker</th></tr>
{% for r in data.routes %}<tr><td>{{ r.name }}</td><td class="{{ 'bad' if r.breaker == 'open' else 'ok' }}">{{ r.breaker }}</td></tr>{% endfor %}</table>
<h2>Domains</h2>
<table id="domains"><tr><th>domain</th><th>warming cap today</th><th>sent today</th><th>health</th></tr>
{% for d in data.domains %}<tr><td>{{ d.name }}</td><td>{{ d.cap if d.cap is not none else '-' }}</td><td>{{ d.sent if d.sent is not none else '-' }}</td><td>{{ d.health or '-' }}</td></tr>
{% else %}<tr><td colspan="4" class="muted">no domains configured</td></tr>{% endfor %}</table>
<h2>Event webhooks</h2>
<div class="grid">
{% for s in ["pending", "delivered", "failed"] %}
<div class="card">{{ s }}<b data-webhooks="{{ s }}">{{ data.webhooks.get(s, 0) }}</b></div>
{% endfor %}
</div>
<h2>Recent events</h2>
<table id="events"><tr><th>time</th><th>event</th><th>recipient</th><th>provider</th><th>message</th><th>detail</th></tr>
{% for e in data.events %}<tr><td>{{ e.at }}</td><td>{{ e.type }}</td><td>{{ e.recipient }}</td><td>{{ e.provider }}</td><td>{{ e.message_id }}</td><td>{{ e.detail }}</td></tr>{% endfor %}</table>
<script>
"use strict";
function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }
function rows(table, header, items, columns) {
  const body = [header.cloneNode(true)];
  for (const item of items) {
    const tr = document.createElement("tr");
    for (const c of columns) tr.appendChild(cell(item[c] === null || item[c] === undefined ? "-" : item[c]));
    body.push(tr);
  }
  table.replaceChildren(...body);
}
async function refresh() {
  try {
    const r = await fetch("console/data", {credentials: "same-origin", cache: "no-store"});
    if (!r.ok) return;
    const d = await r.json();
    document.getElementById("now").textContent = d.now;
    const ready = document.getElementById("ready");
    ready.textContent = d.ready ? "ready" : "NOT READY";
    ready.className = d.ready ? "ok" : "bad";
    document.querySelectorAll("[data-queue]").forEach(e => e.textContent = d.queue[e.dataset.queue] || 0);
    document.querySelectorAll("[data-stat]").forEach(e => e.textContent = d.stats[e.dataset.stat] || 0);
    document.querySelectorAll("[data-webhooks]").forEach(e => e.textContent = d.webhooks[e.dataset.webhooks] || 0);
    document.getElementById("oldest").textContent = d.oldest_age;
    document.getElementById("smtp-open").textContent = d.smtp_open;
    document.getElementById("smtp-total").textContent = d.smtp_total;
    const checks = document.getElementById("checks");
    checks.replaceChildren(...d.checks.map(c => {
      const tr = document.createElement("tr"); const th = document.createElement("th");
      th.textContent = c.name; tr.appendChild(th);
      const td = cell(c.detail); td.className = c.ok ? "ok" : "bad"; tr.appendChild(td); return tr;
    }));
    const routes = document.getElementById("routes");
    rows(routes, routes.rows[0], d.routes, ["name", "breaker"]);
    const events = document.getElementById("events");
    rows(events, events.rows[0], d.events, ["at", "type", "recipient", "provider", "message_id", "detail"]);
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  } catch (e) { /* the next tick tries again */ }
}
setInterval(refresh, {{ (refresh * 1000) | int }});
</script>
</body></html>
"""
)
