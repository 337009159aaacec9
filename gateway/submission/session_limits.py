"""Bounds on one SMTP session: silence, its whole life, a DATA upload, a STARTTLS handshake,
and commands that do nothing.

The silence timer runs on bytes, not commands: a client that trickles a DATA upload one line
at a time stays alive as long as it keeps sending (up to the DATA cap), while one that says
nothing for ``timeout`` seconds is told ``421 4.4.2`` before the connection closes. One timer
per session; it is re-armed only when it fires, so a byte or a command costs one attribute
store, not a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.config import ListenerSection, SmtpSection
from gateway.submission.connection_limits import LimitHit

JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "HELP"})


class SessionRules:
    """A listener's session bounds, shared by its sessions."""

    def __init__(self, listener: ListenerSection, smtp: SmtpSection, on_limit: LimitHit) -> None:
        self.listener = listener.name
        self.idle = smtp.timeout
        self.lifetime = listener.max_session_time
        self.data = smtp.timeout + smtp.max_message_size / smtp.min_data_rate
        self.handshake = listener.tls_handshake_timeout
        self.junk = listener.max_junk_commands
        self.auth_attempts = smtp.auth.max_attempts_per_session
        self.on_limit = on_limit


class SessionTimer:
    """The deadlines of one session. ``close(reply)`` ends it (``reply`` ``None``: without
    one, as during a TLS handshake)."""

    def __init__(
        self,
        rules: SessionRules,
        loop: asyncio.AbstractEventLoop,
        client: str,
        close: Callable[[str | None], None],
    ) -> None:
        self.rules = rules
        self.loop = loop
        self.client = client
        self.close = close
        self.started = self.last_heard = loop.time()
        self.data_since: float | None = None
        self.handshake_since: float | None = None
        self.junk = 0
        self.auth_failures = 0
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        if self._handle is None:
            self._schedule(self.loop.time())

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _deadlines(self) -> list[tuple[float, str, str | None]]:
        r = self.rules
        lifetime = self.started + r.lifetime
        if self.handshake_since is not None:
            # Mid-handshake no application byte can arrive, and no reply can be sent.
            return [
                (self.handshake_since + r.handshake, "tls_handshake_timeout", None),
                (lifetime, "max_session_time", None),
            ]
        found: list[tuple[float, str, str | None]] = [
            (self.last_heard + r.idle, "idle_timeout", "421 4.4.2 Timeout: no data received"),
            (lifetime, "max_session_time", "421 4.7.0 Session too long"),
        ]
        if self.data_since is not None:
            found.append((self.data_since + r.data, "data_time", "421 4.4.2 DATA took too long"))
        return found

    def _schedule(self, now: float) -> None:
        earliest = min(at for at, _, _ in self._deadlines())
        self._handle = self.loop.call_at(max(earliest, now) + 0.001, self._fire)

    def _fire(self) -> None:
        now = self.loop.time()
        for at, limit, reply in self._deadlines():
            if now >= at:
                self._handle = None
                self.rules.on_limit(self.rules.listener, limit, self.client)
                self.close(None if reply is None else f"{reply}, closing connection")
                return
        self._schedule(now)

    def junk_command(self) -> bool:
        """Count a command that does nothing; ``True`` when it is one too many."""
        self.junk += 1
        if self.junk > self.rules.junk:
            self.rules.on_limit(self.rules.listener, "max_junk_commands", self.client)
            return True
        return False

    def auth_exhausted(self) -> bool:
        """``True`` once the session has failed AUTH as often as it may."""
        if self.auth_failures >= self.rules.auth_attempts:
            self.rules.on_limit(self.rules.listener, "max_auth_attempts", self.client)
            return True
        return False
