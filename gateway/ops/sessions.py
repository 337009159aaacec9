"""SMTP sessions: counted for metrics, and drained on shutdown.

:class:`SessionTracker` wraps each listener's protocol factory. It knows every open session,
so a graceful stop can (1) answer the next ``MAIL`` of each session with ``421`` and close it —
a transaction already under way (past ``MAIL``) runs to its ``250`` first — (2) close sessions
that sit idle between transactions at once, and (3) abort whatever is still open when the grace
period ends. A message is acknowledged only by the ``250`` after its durable write, so aborting a
session mid-transaction loses nothing the client was told we have.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway.smtp")

SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


class SessionTracker:
    """Open SMTP sessions per listener, and totals since start."""

    def __init__(self) -> None:
        self.active: dict[str, set[Any]] = {}
        self.total: dict[str, int] = {}
        self.draining = False
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self.on_change: Callable[[str, int, bool], None] | None = None
        """Called as ``(listener, open sessions, opened)`` after each open/close (metrics)."""
        self.on_refusal: Callable[[str, str], None] | None = None
        """Called as ``(listener, reply)`` for every 4xx/5xx reply (metrics)."""

    @property
    def open_sessions(self) -> int:
        return sum(len(s) for s in self.active.values())

    def wrap(self, factory: Callable[[], Any], listener: str) -> Callable[[], Any]:
        """A factory making ``factory``'s protocols, tracked under ``listener``."""
        self.active.setdefault(listener, set())
        self.total.setdefault(listener, 0)

        def make() -> Any:
            protocol = factory()
            made, lost = protocol.connection_made, protocol.connection_lost
            if self.on_refusal is not None:
                protocol.refused = functools.partial(self.on_refusal, listener)

            def connection_made(transport: asyncio.BaseTransport) -> None:
                self._opened(listener, protocol)
                made(transport)

            def connection_lost(error: Exception | None) -> None:
                self._closed(listener, protocol)
                lost(error)

            protocol.connection_made = connection_made
            protocol.connection_lost = connection_lost
            mail = protocol._smtp_methods["MAIL"]

            async def smtp_MAIL(arg: str) -> None:
                if self.draining:
                    await _close(protocol)
                    return
                await mail(arg)

            # aiosmtpd dispatches commands through this table, built in its __init__.
            protocol._smtp_methods["MAIL"] = smtp_MAIL
            return protocol

        return make

    def _opened(self, listener: str, protocol: Any) -> None:
        self.active[listener].add(protocol)
        self.total[listener] += 1
        self._all_closed.clear()
        if self.on_change is not None:
            self.on_change(listener, len(self.active[listener]), True)

    def _closed(self, listener: str, protocol: Any) -> None:
        self.active[listener].discard(protocol)
        if not self.open_sessions:
            self._all_closed.set()
        if self.on_change is not None:
            self.on_change(listener, len(self.active[listener]), False)

    async def drain(self, grace: float) -> int:
        """Stop new transactions, close idle sessions, wait up to ``grace`` seconds for the
        rest, then abort them. Returns how many had to be aborted."""
        self.draining = True
        for sessions in self.active.values():
            for protocol in list(sessions):
                if _idle(protocol):
                    asyncio.create_task(_close(protocol))  # noqa: RUF006 - closes itself
        try:
            await asyncio.wait_for(self._all_closed.wait(), grace)
            return 0
        except TimeoutError:
            pass
        left = [p for sessions in self.active.values() for p in sessions]
        for protocol in left:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abort()
        if left:
            log.warning("aborted %d SMTP sessions still open after %.0fs", len(left), grace)
        return len(left)


def _idle(protocol: Any) -> bool:
    """Between transactions: no MAIL FROM given yet (and so no DATA under way)."""
    envelope = getattr(protocol, "envelope", None)
    return envelope is None or envelope.mail_from is None


async def _close(protocol: Any) -> None:
    transport = getattr(protocol, "transport", None)
    if transport is None or transport.is_closing():
        return
    try:
        await protocol.push(SHUTTING_DOWN)
    except Exception:  # the client went away meanwhile: nothing to tell it
        pass
    transport.close()
