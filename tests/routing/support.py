"""What the routing tests share: two relays to two sinks, submission, and queue look-ups."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.clock import FakeClock
from gateway.message import Attempt, Delivery
from gateway.store.base import DeliveryFilter
from tests.conftest import GatewayThread, Sink, _SinkHandler, make_config

SENDER = "app@example.com"

TWO_RELAYS = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[delivery]
providers = ["primary", "secondary"]
retry_schedule = ["5m"]
max_lifetime = "3d"

[providers.primary]
type = "smtp"
host = "127.0.0.1"
port = {primary}
tls = "none"
timeout = {timeout}

[providers.secondary]
type = "smtp"
host = "127.0.0.1"
port = {secondary}
tls = "none"
"""
"""A ``make_config`` template: ``primary`` then ``secondary``, each an ``smtp`` relay."""


def start_gateway(
    gateway_factory: Any,
    tmp_path: Path,
    *,
    primary: int,
    secondary: int,
    extra: str = "",
    timeout: float = 10,
    **kwargs: Any,
) -> tuple[GatewayThread, FakeClock]:
    clock = FakeClock()
    config = make_config(
        tmp_path,
        TWO_RELAYS + extra,
        primary=primary,
        secondary=secondary,
        timeout=timeout,
    )
    return gateway_factory(config, clock=clock, deliver=False, **kwargs), clock


def submit(gw: GatewayThread, *recipients: str, sender: str = SENDER) -> None:
    body = (
        f"From: <{sender}>\r\nTo: <{recipients[0]}>\r\nSubject: routing test\r\n"
        f"Message-ID: <routing-test@example.com>\r\n\r\nhello\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail(sender, list(recipients), body)


def run_once(gw: GatewayThread) -> int:
    return gw.call(gw.gateway.dispatcher.run_once())


def delivery_of(gw: GatewayThread, recipient: str) -> Delivery:
    (found,) = gw.call(gw.gateway.store.list_deliveries(DeliveryFilter(recipient=recipient)))
    return found


def attempts_of(gw: GatewayThread, recipient: str) -> list[Attempt]:
    return gw.call(gw.gateway.store.attempts(delivery_of(gw, recipient)))


class StallingSink(Sink):
    """A sink that, while ``stalled``, reads a whole message and then never answers it."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = True
        self.data_seen: list[list[str]] = []

    def handler(self) -> _SinkHandler:
        return _StallingHandler(self)


class _StallingHandler(_SinkHandler):
    sink: StallingSink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.sink.lock:
            self.sink.data_seen.append(list(envelope.rcpt_tos))
        if self.sink.stalled:
            await asyncio.Event().wait()  # cancelled when the client hangs up
        return await super().handle_DATA(server, session, envelope)


class SilentServer:
    """Accepts TCP connections on loopback and never says a word (no SMTP banner)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0
        self.transports: list[asyncio.BaseTransport] = []
        self._server: asyncio.Server | None = None

    @property
    def connections(self) -> int:
        return len(self.transports)

    def start(self) -> None:
        self._thread.start()
        server = self

        class Mute(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                server.transports.append(transport)

        async def listen() -> asyncio.Server:
            return await self._loop.create_server(Mute, "127.0.0.1", 0)

        self._server = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for transport in self.transports:
                transport.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
