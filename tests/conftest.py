"""Shared fixtures: TLS certificates, a real sink SMTP server, and a gateway on loopback.

Everything binds to 127.0.0.1 on an OS-chosen port and is stopped by the fixture that started
it. Time comes from ``FakeClock`` wherever a test needs it to move.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pluggy
import pytest
import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.clock import FakeClock
from gateway.config import Config, parse_config
from gateway.server import Gateway, new_event_loop
from tests.dnsserver import BlackHole, DnsServer, Records, start_dns_server
from tests.redisserver import redis_prefix, redis_server  # noqa: F401 (fixtures)
from tests.redistopology import redis_cluster, redis_sentinel  # noqa: F401 (fixtures)

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


# --- TLS ----------------------------------------------------------------------------------------


class Certificates:
    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.cert_file = directory / "server.pem"
        self.key_file = directory / "server.key"
        self.ca_file = directory / "ca.pem"
        server.cert_chain_pems[0].write_to_path(str(self.cert_file))
        for pem in server.cert_chain_pems[1:]:
            pem.write_to_path(str(self.cert_file), append=True)
        server.private_key_pem.write_to_path(str(self.key_file))
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("tls"))


# --- a real SMTP sink -----------------------------------------------------------------------------


class Received:
    def __init__(
        self, mail_from: str, rcpt_tos: list[str], data: bytes, tls: bool = False, peer: str = ""
    ) -> None:
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self.data = data
        self.tls = tls
        """Whether the session had switched to TLS (STARTTLS)."""
        self.peer = peer
        """The client's IP address."""
        self.at = time.time()
        """When the sink took the message (rate tests)."""


class _SinkHandler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.sink.pipelining:  # aiosmtpd handles pipelined commands; it just doesn't say so
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.sink.next_reply("RCPT", address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        recipients = list(envelope.rcpt_tos)
        reply = self.sink.next_reply("DATA", recipients[0])
        if reply is not None:
            return reply
        with self.sink.lock:
            self.sink.messages.append(
                Received(
                    envelope.mail_from,
                    recipients,
                    envelope.original_content,
                    tls=session.ssl is not None,
                    peer=str(session.peer[0]) if session.peer else "",
                )
            )
        return f"250 2.0.0 OK queued as SINK{len(self.sink.messages)}"


class Sink:
    """An aiosmtpd server on loopback, in its own thread, that stores what it receives.

    ``script(address, stage, replies)`` makes the sink answer the next RCPT or DATA for
    ``address`` with the given replies in turn (e.g. ``["451 4.3.0 later"]``), then accept.
    It advertises PIPELINING (so relays use their pipelined path) unless told not to. ``host``
    and ``port`` pick another loopback address (127.0.0.2 …) or a fixed port (MX tests).
    """

    def __init__(
        self,
        pipelining: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.pipelining = pipelining
        self.host = host
        self.tls_context = tls_context
        """Offer STARTTLS with this server context."""
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self._scripts: dict[tuple[str, str], collections.deque[str]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sink", daemon=True)
        self.port = port
        self._server: asyncio.Server | None = None

    def script(self, address: str, stage: str, replies: list[str]) -> None:
        with self.lock:
            self._scripts[(stage, address)] = collections.deque(replies)

    def next_reply(self, stage: str, address: str) -> str | None:
        with self.lock:
            replies = self._scripts.get((stage, address))
            return replies.popleft() if replies else None

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if address in m.rcpt_tos]

    def handler(self) -> _SinkHandler:
        """The aiosmtpd handler of a new session (a test may subclass it)."""
        return _SinkHandler(self)

    def start(self) -> None:
        self._thread.start()

        async def listen() -> asyncio.Server:
            return await self._loop.create_server(
                lambda: SMTP(
                    self.handler(),
                    hostname="sink.test",
                    enable_SMTPUTF8=True,
                    loop=self._loop,
                    tls_context=self.tls_context,
                ),
                self.host,
                self.port,
            )

        self._server = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    server.start()
    yield server
    server.stop()


# --- configuration and a gateway in a thread ------------------------------------------------------


RELAY_TO_SINK = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[delivery]
providers = ["relay"]
retry_schedule = ["5m"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
"""
"""A loopback dev listener and an ``smtp`` provider to the sink on ``{port}``; a ``make_config``
template (``str.format``), so literal braces are doubled."""


def make_config(tmp_path: Path, toml: str = "", **format_args: Any) -> Config:
    """A config rooted in ``tmp_path``; ``toml`` (a ``str.format`` template when
    ``format_args`` are given) is appended after the test defaults."""
    base = f"""
[gateway]
hostname = "gw.test"
data_dir = "{tmp_path / "data"}"
"""
    body = toml.format(**format_args) if format_args else toml
    return parse_config(base + body, source="test.toml")


class GatewayThread:
    """A ``Gateway`` running in its own event loop thread, so blocking clients can talk to it."""

    def __init__(
        self,
        config: Config,
        clock: FakeClock | None = None,
        deliver: bool = True,
        plugin_manager: pluggy.PluginManager | None = None,
    ) -> None:
        self.clock = clock
        self.deliver = deliver
        self.plugin_manager = plugin_manager
        self._loop = new_event_loop()  # the production loop (uvloop), not the test runner's
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway", daemon=True)
        self._thread.start()
        self.gateway: Gateway = self.call(self._build(config))

    async def _build(self, config: Config) -> Gateway:
        return Gateway(config, clock=self.clock, plugin_manager=self.plugin_manager)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> GatewayThread:
        self.call(self.gateway.start(deliver=self.deliver))
        return self

    def port(self, listener: str) -> int:
        return self.gateway.smtp_ports[listener]

    def stop(self) -> None:
        self.call(self.gateway.stop(grace=5))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def gateway_factory() -> Iterator[Callable[..., GatewayThread]]:
    started: list[GatewayThread] = []

    def factory(
        config: Config,
        clock: FakeClock | None = None,
        deliver: bool = True,
        plugin_manager: pluggy.PluginManager | None = None,
    ) -> GatewayThread:
        gateway = GatewayThread(
            config, clock=clock, deliver=deliver, plugin_manager=plugin_manager
        ).start()
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        gateway.stop()


# --- a real authoritative DNS server (NSD) ----------------------------------------------------


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[Callable[..., DnsServer]]:
    """Factory: ``dns_server({zone: records}, servfail=[...])`` starts NSD; stopped by PID."""
    started: list[DnsServer] = []

    def factory(zones: Mapping[str, Records], servfail: Iterable[str] = ()) -> DnsServer:
        server = start_dns_server(zones, tmp_path / f"nsd{len(started)}", servfail=servfail)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    """A loopback DNS 'server' (UDP and TCP) that never answers."""
    with BlackHole() as hole:
        yield hole
