"""The one clock: every timestamp in the gateway comes from here, so tests can move time."""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch (float, UTC)."""

    def now(self) -> float: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that only moves when told to; for tests and simulations."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, timestamp: float) -> None:
        self._now = timestamp


def rfc5322_date(timestamp: float) -> str:
    """``timestamp`` as an RFC 5322 date-time in UTC, ``+0000`` (``-0000`` would say the zone
    is unknown, RFC 5322 3.3); formatted once per second, since every message needs one."""
    return _rfc5322_date(int(timestamp))


@functools.lru_cache(maxsize=4)
def _rfc5322_date(second: int) -> str:
    return email.utils.format_datetime(dt.datetime.fromtimestamp(second, dt.UTC))
