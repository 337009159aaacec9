"""Slowing down and stopping password guessing (Postfix's ``smtpd_client_auth_rate_limit``,
with a per-username limit as well).

Failures are counted per client (address, or IPv6 prefix) and per username over a sliding
``window``. Each failure is answered only after a delay that grows with the client's recent
failures; past ``client_failures`` (or ``user_failures``) the client (or username) cools off:
AUTH answers ``454 4.7.0`` without checking anything until ``cooling_off`` has passed, so the
right password does not work either. A success clears the client's count, and a client that
logged in as a user within ``window`` is not locked out by guesses at that username from
elsewhere (guessers must not be able to lock a real application out).

Password checks (scrypt, tens of milliseconds of CPU each) run in a small dedicated thread
pool, at most one at a time per client, with a bounded queue: guessing cannot starve the event
loop, other clients' logins or the default executor.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging

from gateway.clock import Clock
from gateway.config import SmtpAuthSection
from gateway.message import Reject
from gateway.passwords import verify_password

log = logging.getLogger("gateway.smtp.auth")

COOLING_OFF = Reject(454, "4.7.0", "Too many failed authentication attempts, try again later")
BUSY = Reject(454, "4.7.0", "Temporary authentication failure, try again later")
TOO_MANY_ATTEMPTS = Reject(421, "4.7.0", "Too many authentication attempts, closing connection")
_MAX_TRACKED = 100_000


class _Failures:
    """Failure times per key within a window; bounded in keys."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._times: dict[str, collections.deque[float]] = {}

    def count(self, key: str, now: float) -> int:
        times = self._times.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._times[key]
            return 0
        return len(times)

    def add(self, key: str, now: float) -> None:
        if key not in self._times and len(self._times) >= _MAX_TRACKED:
            self._times.pop(next(iter(self._times)))
        self._times.setdefault(key, collections.deque(maxlen=1024)).append(now)

    def clear(self, key: str) -> None:
        self._times.pop(key, None)


class AuthThrottle:
    """Failure counts, cooling-off and delays, shared by every listener of a worker."""

    def __init__(self, settings: SmtpAuthSection, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._clients = _Failures(settings.window)
        self._users = _Failures(settings.window)
        self._locked: dict[str, float] = {}
        """``"client:<key>"``/``"user:<name>"`` → end of its cooling-off."""
        self._known: dict[tuple[str, str], float] = {}
        """(username, client) → when that client last logged in as that user."""

    def refusal(self, client: str, username: str) -> Reject | None:
        """``454`` while the client or the username cools off, else ``None``."""
        now = self.clock.now()
        known = self._known.get((username, client))
        keys = [f"client:{client}"]
        if known is None or now - known > self.settings.window:
            keys.append(f"user:{username}")
        for key in keys:
            until = self._locked.get(key)
            if until is not None:
                if now < until:
                    return COOLING_OFF
                del self._locked[key]
        return None

    def failed(self, client: str, username: str) -> float:
        """Record a failure; the seconds to wait before answering it."""
        s = self.settings
        now = self.clock.now()
        self._clients.add(client, now)
        self._users.add(username, now)
        client_failures = self._clients.count(client, now)
        if client_failures >= s.client_failures:
            self._cool_off(f"client:{client}", now)
        if self._users.count(username, now) >= s.user_failures:
            self._cool_off(f"user:{username}", now)
        return min(s.max_failure_delay, s.failure_delay * client_failures)

    def succeeded(self, client: str, username: str) -> None:
        self._clients.clear(client)
        if len(self._known) >= _MAX_TRACKED:
            self._known.clear()
        self._known[(username, client)] = self.clock.now()

    def _cool_off(self, key: str, now: float) -> None:
        if len(self._locked) >= _MAX_TRACKED:
            self._locked = {k: t for k, t in self._locked.items() if t > now}
        if key not in self._locked:
            log.warning("auth cooling off %s for %gs", key, self.settings.cooling_off)
        self._locked[key] = now + self.settings.cooling_off


class Busy(Exception):
    """More password checks are waiting than ``password_queue`` allows."""


class PasswordChecker:
    """scrypt verification in a bounded pool of threads, one check at a time per client."""

    def __init__(self, workers: int, queue: int) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "password-check")
        self._capacity = workers + queue
        self._pending = 0
        self._per_client: dict[str, tuple[asyncio.Lock, int]] = {}

    async def verify(self, client: str, password: bytes, encoded: str) -> bool:
        """Raises ``Busy`` when the queue is full."""
        if self._pending >= self._capacity:
            raise Busy
        self._pending += 1
        lock, users = self._per_client.get(client) or (asyncio.Lock(), 0)
        self._per_client[client] = (lock, users + 1)
        try:
            async with lock:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._pool, verify_password, password, encoded)
        finally:
            self._pending -= 1
            lock, users = self._per_client[client]
            if users > 1:
                self._per_client[client] = (lock, users - 1)
            else:
                del self._per_client[client]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
