"""A circuit breaker per provider: stop sending through one that keeps failing, probe it later.

``closed`` (normal) → ``open`` after ``failures`` consecutive failed sends, or when at least
``error_rate`` of the sends in the last ``window`` failed (once there were ``min_sends``).
``open`` refuses sends until ``cooldown`` has passed, then ``half_open`` lets ``probes`` sends
through at once: a success closes the breaker, a failure opens it for another cooldown.

State lives in the worker process: each worker learns a provider's health from its own sends,
which needs no shared writes on the delivery path; the router divides the counts by the worker
count (``routing.per_worker_breaker``) so the node keeps the configured threshold. Time comes
from the injected clock.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Literal

from gateway.clock import Clock
from gateway.config import BreakerSection

log = logging.getLogger("gateway.routing")

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """One provider's breaker. ``allow()`` before a send, then exactly one ``record()``."""

    def __init__(
        self,
        name: str,
        settings: BreakerSection,
        clock: Clock,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.clock = clock
        self.on_change = on_change
        self._window = settings.window_seconds
        self._cooldown = settings.cooldown_seconds
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = 0
        # (whole second, sends, failures) buckets inside the error-rate window
        self._buckets: collections.deque[list[int]] = collections.deque()
        self._sends = 0
        self._failures = 0
        self.opened = 0
        """How many times it has opened (for ``provider_stats``)."""
        self.last_error = ""

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self.clock.now() >= self._opened_at + self._cooldown:
            self._set("half_open")
            self._probing = 0
        return self._state

    @property
    def retry_at(self) -> float:
        """When an open breaker lets its next probe through."""
        return self._opened_at + self._cooldown

    def allow(self) -> bool:
        """Whether a send may go through now; in ``half_open`` this takes a probe slot."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and self._probing < self.settings.probes:
            self._probing += 1
            return True
        return False

    def record(self, ok: bool, detail: str = "") -> None:
        """The outcome of a send that ``allow()`` let through."""
        if self._state == "half_open":
            self._probing = max(0, self._probing - 1)
        if ok:
            self._consecutive = 0
            self._count(failed=False)
            if self._state != "closed":
                self._close()
            return
        self.last_error = detail
        self._consecutive += 1
        sends, failures = self._count(failed=True)
        if self._state == "half_open":
            self._open(f"probe failed: {detail}")
        elif self._state == "closed":
            if self._consecutive >= self.settings.failures:
                self._open(f"{self._consecutive} consecutive failures, last: {detail}")
            elif sends >= self.settings.min_sends and failures >= self.settings.error_rate * sends:
                self._open(f"{failures} of {sends} sends failed in {self.settings.window}")

    def _count(self, *, failed: bool) -> tuple[int, int]:
        """Add one send to the window; return the window's (sends, failures)."""
        second = int(self.clock.now())
        buckets = self._buckets
        while buckets and buckets[0][0] <= second - self._window:
            _, sends, failures = buckets.popleft()
            self._sends -= sends
            self._failures -= failures
        if not buckets or buckets[-1][0] != second:
            buckets.append([second, 0, 0])
        bucket = buckets[-1]
        bucket[1] += 1
        bucket[2] += failed
        self._sends += 1
        self._failures += failed
        return self._sends, self._failures

    def _open(self, why: str) -> None:
        self._opened_at = self.clock.now()
        self.opened += 1
        self._clear_window()
        log.warning("provider %s breaker opened: %s", self.name, why)
        self._set("open")

    def _close(self) -> None:
        self._consecutive = 0
        self._clear_window()
        log.warning("provider %s breaker closed after a successful send", self.name)
        self._set("closed")

    def _clear_window(self) -> None:
        self._buckets.clear()
        self._sends = self._failures = 0

    def _set(self, state: BreakerState) -> None:
        if state != self._state:
            self._state = state
            if self.on_change is not None:
                self.on_change(self.name, state)
