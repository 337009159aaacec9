"""Fitting planned send times under caps: a campaign's throttle, warming caps, send windows.

Send-time optimization piles recipients into their best hours; a cap must never be broken by
it. :class:`HourlyPlanner` places each planned time in its hour if every cap still has room
there and the hour is allowed (the send window), else moves it to the same minute of the next
hour that has room — overflow spills forward, never breaks a cap and never goes earlier than
planned. Placement is greedy in call order, so the caller decides who goes first (e.g. the
order of fan-out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

HOUR = 3600
HORIZON_HOURS = 24 * 366


@dataclass(frozen=True)
class Cap:
    """At most ``limit`` sends per ``period`` seconds (a multiple of an hour, aligned to the
    epoch in UTC), counted separately per key (e.g. the recipient domain for warming caps;
    ``per_key=False`` counts every send together, as a campaign throttle does)."""

    period: int
    limit: int
    per_key: bool = False

    def __post_init__(self) -> None:
        if self.period <= 0 or self.period % HOUR:
            raise ValueError("a cap's period is a positive multiple of an hour")
        if self.limit < 1:
            raise ValueError("a cap's limit is at least 1")


class CapacityExhausted(Exception):
    """No hour within a year has room: the caps or the window leave nothing."""


@dataclass
class HourlyPlanner:
    """Places planned send times under ``caps``; ``allowed(hour_start)`` says whether an hour
    (its start, seconds since the epoch) is inside the send window."""

    caps: list[Cap]
    allowed: Callable[[int], bool] = lambda hour_start: True
    _used: dict[tuple[int, int, str], int] = field(default_factory=dict)

    def place(self, at: float, key: str = "") -> float:
        """The time to send something planned for ``at``; counts it against the caps."""
        hour_start = int(at) // HOUR * HOUR
        offset = at - hour_start
        for _ in range(HORIZON_HOURS):
            if self.allowed(hour_start) and self._has_room(hour_start, key):
                self._count(hour_start, key)
                return hour_start + offset
            hour_start += HOUR
        raise CapacityExhausted(f"no hour with room within {HORIZON_HOURS} hours of {at}")

    def used(self, cap: Cap, at: float, key: str = "") -> int:
        """How much of ``cap`` is used in the period holding ``at``."""
        index = self.caps.index(cap)
        return self._used.get(self._slot(index, cap, int(at), key), 0)

    def _slot(self, index: int, cap: Cap, at: int, key: str) -> tuple[int, int, str]:
        return (index, at // cap.period, key if cap.per_key else "")

    def _has_room(self, hour_start: int, key: str) -> bool:
        return all(
            self._used.get(self._slot(i, cap, hour_start, key), 0) < cap.limit
            for i, cap in enumerate(self.caps)
        )

    def _count(self, hour_start: int, key: str) -> None:
        for i, cap in enumerate(self.caps):
            slot = self._slot(i, cap, hour_start, key)
            self._used[slot] = self._used.get(slot, 0) + 1
