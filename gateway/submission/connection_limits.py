"""Admission of new SMTP connections on one listener (Postfix's anvil limits).

Before a session exists — no aiosmtpd protocol, no greeting — a connection is checked against
the listener's ``max_sessions``, ``max_sessions_per_client`` and
``max_connections_per_minute``. A client over a limit gets ``421 4.7.0`` with the reason and
is closed; the refusal is counted in metrics and logged with its address. Clients in a
tenant's ``smtp_networks`` are exempt from the per-client limits (not from ``max_sessions``).
IPv6 clients are counted per ``ipv6_prefix`` network, since one host may hold a whole /64.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from gateway.clock import Clock
from gateway.config import ListenerSection

LimitHit = Callable[[str, str, str], None]
"""Called as ``(listener, limit, client address)`` when a limit refuses or ends a session."""
ABORT_AFTER = 5.0
"""Seconds a closed connection may take to flush its last reply before it is aborted (a client
that stops reading must not keep a file descriptor)."""
_MAX_RATE_KEYS = 100_000


@functools.lru_cache(maxsize=4096)
def client_key(address: str, ipv6_prefix: int) -> str:
    """What a client is counted as: its IPv4 address, or its IPv6 network of ``ipv6_prefix``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return address


def close_with(transport: asyncio.BaseTransport, reply: str | None) -> None:
    """Send ``reply`` (if any) and close; abort if it cannot be flushed within
    ``ABORT_AFTER``."""
    if transport.is_closing():
        return
    if reply is not None:
        transport.write(reply.encode() + b"\r\n")  # type: ignore[attr-defined]
    transport.close()
    if transport.get_write_buffer_size():  # type: ignore[attr-defined]
        asyncio.get_running_loop().call_later(ABORT_AFTER, transport.abort)  # type: ignore[attr-defined]


class ConnectionLimits:
    """Open sessions and recent connections per client on one listener."""

    def __init__(
        self,
        listener: ListenerSection,
        *,
        clock: Clock,
        exempt: Callable[[str], bool],
        on_limit: LimitHit,
    ) -> None:
        self.listener = listener
        self.clock = clock
        self.exempt = exempt
        self.on_limit = on_limit
        self.open_sessions = 0
        self._per_client: dict[str, int] = {}
        self._recent: dict[str, tuple[float, int]] = {}
        """Client → (start of its current minute, connections in it)."""

    def admit(self, address: str) -> tuple[str, str | None]:
        """``(client key, None)`` and the session counted, or ``(key, refusal reply)``."""
        listener = self.listener
        key = client_key(address, listener.ipv6_prefix)
        if self.open_sessions >= listener.max_sessions:
            return key, self._refuse("max_sessions", address, "Too many connections, try later")
        exempt = self.exempt(address)
        if not exempt:
            if self._per_client.get(key, 0) >= listener.max_sessions_per_client:
                return key, self._refuse(
                    "max_sessions_per_client", address, "Too many connections from your address"
                )
            if listener.max_connections_per_minute and self._over_rate(key):
                return key, self._refuse(
                    "max_connections_per_minute",
                    address,
                    "Too many connections per minute from your address, slow down",
                )
        self.open_sessions += 1
        self._per_client[key] = self._per_client.get(key, 0) + 1
        return key, None

    def release(self, key: str) -> None:
        self.open_sessions -= 1
        left = self._per_client.get(key, 1) - 1
        if left > 0:
            self._per_client[key] = left
        else:
            self._per_client.pop(key, None)

    def _over_rate(self, key: str) -> bool:
        now = self.clock.now()
        start, count = self._recent.get(key, (now, 0))
        if now - start >= 60 or now < start:
            start, count = now, 0
        if count >= self.listener.max_connections_per_minute:
            return True
        if len(self._recent) >= _MAX_RATE_KEYS:
            self._recent = {k: v for k, v in self._recent.items() if now - v[0] < 60}
        self._recent[key] = (start, count + 1)
        return False

    def _refuse(self, limit: str, address: str, text: str) -> str:
        self.on_limit(self.listener.name, limit, address)
        return f"421 4.7.0 {text}"

    def wrap(self, factory: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory that admits or refuses each connection, and hands an admitted
        one to a protocol made by ``factory``."""

        def make() -> asyncio.Protocol:
            return _Admission(self, factory)

        return make


class _Admission(asyncio.Protocol):
    """The first protocol of every connection: cheap, so a refusal costs no SMTP session."""

    def __init__(self, limits: ConnectionLimits, factory: Callable[[], Any]) -> None:
        self.limits = limits
        self.factory = factory

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        key, refusal = self.limits.admit(address)
        if refusal is not None:
            close_with(transport, refusal)
            return
        session = self.factory()
        lost = session.connection_lost
        limits = self.limits

        def connection_lost(error: Exception | None) -> None:
            limits.release(key)
            lost(error)

        session.connection_lost = connection_lost
        transport.set_protocol(session)
        session.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Only a refused connection ends here; an admitted one belongs to its session."""


class LimitLog:
    """Logs limit hits with the client's address, at most one line per listener, limit and
    client a minute (with the count of those not logged), so a flood cannot flood the log."""

    def __init__(self, clock: Clock, logger: logging.Logger, interval: float = 60.0) -> None:
        self.clock = clock
        self.logger = logger
        self.interval = interval
        self._last: dict[tuple[str, str, str], tuple[float, int]] = {}

    def hit(self, listener: str, limit: str, client: str) -> None:
        now = self.clock.now()
        key = (listener, limit, client)
        logged_at, quiet = self._last.get(key, (None, 0))
        if logged_at is not None and 0 <= now - logged_at < self.interval:
            self._last[key] = (logged_at, quiet + 1)
            return
        if len(self._last) >= _MAX_RATE_KEYS:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
        self._last[key] = (now, 0)
        more = f" ({quiet} more not logged)" if quiet else ""
        self.logger.warning("smtp limit %s listener=%s client=%s%s", limit, listener, client, more)
