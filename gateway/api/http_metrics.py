"""HTTP request metrics: an ASGI middleware that times every routed request and counts it by
method, route (the path template, so ids do not multiply the series) and status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from gateway.ops.metrics import GatewayMetrics


def http_metrics(metrics: GatewayMetrics) -> Callable[[ASGIApp], ASGIApp]:
    """A litestar middleware factory recording into ``metrics``."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def record(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500  # what the client sees if the app raises before answering

            async def send_and_note(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_and_note)
            finally:
                route = scope.get("path_template") or "(unmatched)"
                seconds = time.perf_counter() - started
                metrics.http_request(scope["method"], str(route), status, seconds)

        return record

    return middleware
