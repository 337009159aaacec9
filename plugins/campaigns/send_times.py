"""When each recipient's mail may go: the throttle spreads a run over hours, the window keeps
arrivals to given days and hours in a zone (or each recipient's own zone).

The result is a delivery's ``not_before``; the dispatcher does not claim it earlier. This is
the seam for per-recipient send-time optimization: whatever plans a recipient's time only has
to return a timestamp, and the window still applies after it.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway_plugins.campaigns.campaign_model import Window


def throttled(start: float, index: int, per_hour: int | None) -> float:
    """The ``index``-th (from 0) recipient's earliest time at ``per_hour`` from ``start``."""
    if not per_hour:
        return start
    return start + index * 3600.0 / per_hour


def zone_of(name: str, fallback: str = "UTC") -> ZoneInfo:
    for candidate in (name, fallback, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def next_open(at: float, window: Window, recipient_zone: str = "") -> float:
    """The first moment at or after ``at`` inside ``window`` (in the recipient's zone when
    the window says so and the recipient has a valid one)."""
    zone = zone_of(recipient_zone if window.recipient_zone else "", window.zone)
    local = dt.datetime.fromtimestamp(at, zone)
    days = set(window.days)
    for offset in range(8):
        day = (local + dt.timedelta(days=offset)).date()
        if day.weekday() not in days:
            continue
        opens = _local(day, window.start_hour, zone)
        closes = _local(day, window.end_hour, zone)
        if offset == 0 and opens <= local < closes:
            return at
        if local < opens:
            return opens.timestamp()
    return at  # no open day at all: the API refuses such windows; never hold mail forever


def _local(day: dt.date, hour: int, zone: ZoneInfo) -> dt.datetime:
    if hour >= 24:
        return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), zone)
    return dt.datetime.combine(day, dt.time(hour), zone)
