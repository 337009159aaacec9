"""The send-time profile of one contact, and the time it plans a campaign send for.

The formula, so that a test (or an operator) can recompute it:

1. Take the contact's human opens and clicks of the last 90 days (machine-classified ones never
   count); an open weighs 1, a click 2.
2. Histogram the weights by UTC hour (24 bins) and by UTC weekday (7 bins, Monday = 0).
3. Smooth each circularly over its neighbours: ``s[i] = h[i-1] + h[i] + h[i+1]`` (indices wrap:
   hour 23 neighbours hour 0).
4. Best hour = the argmax of the smoothed hours, the earliest on ties; best weekday likewise.
5. Confidence = ``s[best] / sum(s)`` x ``min(1, events / 10)``, where ``events`` is the number of
   events counted (not their weight).

Planning a send for ``scheduled_at`` with a window (24 h by default): with confidence ≥ 0.3,
the first start of the best hour inside ``[scheduled_at, scheduled_at + window)`` — on the
best weekday too when the window is 7 days or longer — plus a minute offset taken from a hash
of the key (campaign and contact), so that one hour's sends spread over it; if
``scheduled_at`` falls inside that hour, the send is planned no earlier than ``scheduled_at``.
Otherwise, or when no such hour is in the window, the send goes at ``scheduled_at``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from gateway.plugin_manager import call_first

WINDOW_DAYS = 90
WEIGHTS = {"opened": 1, "clicked": 2}
MIN_CONFIDENCE = 0.3
FULL_CONFIDENCE_EVENTS = 10
HOUR = 3600
DAY = 24 * HOUR


class Engagement(msgspec.Struct, frozen=True):
    """One human open or click of the contact, at ``at`` (seconds since the epoch, UTC)."""

    at: float
    kind: Literal["opened", "clicked"]


class Profile(msgspec.Struct, frozen=True):
    best_hour: int
    best_weekday: int
    confidence: float
    events: int
    hours: list[int]
    """The smoothed hourly weights, index = UTC hour."""
    weekdays: list[int]


def _smoothed(histogram: list[int]) -> list[int]:
    size = len(histogram)
    return [histogram[i - 1] + histogram[i] + histogram[(i + 1) % size] for i in range(size)]


def _argmax_earliest(values: list[int]) -> int:
    return values.index(max(values))


def build_profile(events: Iterable[Engagement], now: float) -> Profile | None:
    """The profile from the events of the 90 days before ``now``; ``None`` with no event."""
    hours, weekdays = [0] * 24, [0] * 7
    count = 0
    since = now - WINDOW_DAYS * DAY
    for event in events:
        if not since <= event.at <= now:
            continue
        weight = WEIGHTS[event.kind]
        seconds = int(event.at)
        hours[(seconds % DAY) // HOUR] += weight
        weekdays[(seconds // DAY + 3) % 7] += weight  # 1970-01-01 was a Thursday (3)
        count += 1
    if not count:
        return None
    smooth_hours, smooth_days = _smoothed(hours), _smoothed(weekdays)
    best_hour = _argmax_earliest(smooth_hours)
    share = smooth_hours[best_hour] / sum(smooth_hours)
    return Profile(
        best_hour=best_hour,
        best_weekday=_argmax_earliest(smooth_days),
        confidence=share * min(1.0, count / FULL_CONFIDENCE_EVENTS),
        events=count,
        hours=smooth_hours,
        weekdays=smooth_days,
    )


def minute_offset(key: str) -> int:
    """A stable 0-3599 s offset inside the hour for ``key`` (campaign and contact)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % HOUR


def plan_send(profile: Profile | None, scheduled_at: float, key: str, window: float = DAY) -> float:
    """When to send a campaign message planned for ``scheduled_at`` (see the module doc)."""
    if profile is None or profile.confidence < MIN_CONFIDENCE:
        return scheduled_at
    use_weekday = window >= 7 * DAY
    hour_start = int(scheduled_at) // HOUR * HOUR
    end = scheduled_at + window
    while hour_start < end:
        day_number = hour_start // DAY
        if (hour_start % DAY) // HOUR == profile.best_hour and (
            not use_weekday or (day_number + 3) % 7 == profile.best_weekday
        ):
            planned = max(float(hour_start + minute_offset(key)), scheduled_at)
            return planned if planned < end else scheduled_at
        hour_start += HOUR
    return scheduled_at


async def planned_time(
    gateway: Any, profile: Profile | None, scheduled_at: float, key: str, window: float = DAY
) -> float:
    """The planned time: a plugin's ``gateway_send_time_plan`` if one answers (clamped to the
    window), else :func:`plan_send`."""
    planned: float | None = await call_first(
        gateway.pm,
        "gateway_send_time_plan",
        gateway=gateway,
        profile=profile,
        scheduled_at=scheduled_at,
        key=key,
        window=window,
    )
    if planned is None:
        return plan_send(profile, scheduled_at, key, window)
    return min(max(float(planned), scheduled_at), scheduled_at + window - 1)
