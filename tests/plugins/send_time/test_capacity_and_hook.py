"""Planned send times under caps (throttle, warming per domain, a send window): no cap is ever
exceeded, nothing moves earlier, overflow spills to the next hour with room; and a plugin's
``gateway_send_time_plan`` replaces the formula through a real gateway."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from gateway_plugins.send_time.capacity import HOUR, Cap, CapacityExhausted, HourlyPlanner
from gateway_plugins.send_time.profile import (
    DAY,
    Engagement,
    build_profile,
    plan_send,
    planned_time,
)

from gateway.plugin_manager import hookimpl, make_plugin_manager
from gateway.server import Gateway
from tests.conftest import make_config

MONDAY = 1_798_416_000  # 2026-12-28 00:00 UTC, a Monday


def office_hours(hour_start: int) -> bool:
    """Mon-Fri 09:00-17:00 UTC."""
    weekday = (hour_start // DAY + 3) % 7
    return weekday < 5 and 9 <= (hour_start % DAY) // HOUR < 17


def test_1000_optimized_plans_never_break_a_cap_or_the_window() -> None:
    rng = random.Random(24)
    throttle = Cap(period=HOUR, limit=60)
    warming = Cap(period=DAY, limit=150, per_key=True)
    planner = HourlyPlanner([throttle, warming], allowed=office_hours)
    domains = ["a.test", "b.test", "c.test", "d.test"]
    placed: list[tuple[float, float, str]] = []
    for contact in range(1000):
        best = rng.choice([9, 10, 10, 10, 14, 23])  # most of them want 10:00
        events = [Engagement(MONDAY - DAY * d + best * HOUR, "opened") for d in range(1, 12)]
        wanted = plan_send(build_profile(events, MONDAY), MONDAY, f"run-1:{contact}")
        domain = rng.choice(domains)
        placed.append((wanted, planner.place(wanted, domain), domain))

    per_hour = Counter(int(at) // HOUR for _, at, _ in placed)
    assert max(per_hour.values()) <= 60
    per_day_domain = Counter((int(at) // DAY, domain) for _, at, domain in placed)
    assert max(per_day_domain.values()) <= 150
    for wanted, at, domain in placed:
        assert at >= wanted
        assert office_hours(int(at) // HOUR * HOUR)
        assert (at - wanted) % HOUR == pytest.approx(0)  # the same minute, a later hour
        if at != wanted:
            # It moved only because its own hour had no room (or was outside the window).
            hour = int(wanted) // HOUR * HOUR
            full = per_hour[hour // HOUR] >= 60
            domain_full = per_day_domain[(hour // DAY, domain)] >= 150
            assert full or domain_full or not office_hours(hour)
    assert planner.used(throttle, MONDAY + 10 * HOUR) == 60  # the popular hour is full


def test_a_window_that_never_opens_is_refused_clearly() -> None:
    planner = HourlyPlanner([Cap(period=HOUR, limit=1)], allowed=lambda hour: False)
    with pytest.raises(CapacityExhausted, match="no hour with room"):
        planner.place(MONDAY)
    with pytest.raises(ValueError, match="multiple of an hour"):
        Cap(period=90, limit=1)


class EveryoneAtNoon:
    @hookimpl
    def gateway_send_time_plan(self, scheduled_at: float, window: float) -> float:
        return scheduled_at // DAY * DAY + 12 * HOUR


async def test_a_plugin_replaces_the_send_time_formula(tmp_path: Path) -> None:
    events = [Engagement(MONDAY - DAY * d + 7 * HOUR, "clicked") for d in range(1, 12)]
    profile = build_profile(events, MONDAY)
    plain = Gateway(make_config(tmp_path), plugin_manager=make_plugin_manager(entry_points=False))
    formula = await planned_time(plain, profile, MONDAY, "run:1")
    assert formula == plan_send(profile, MONDAY, "run:1")
    # Clicks all at 07:00: smoothing ties 06-08, and the earliest of a tie wins.
    assert (int(formula) % DAY) // HOUR == 6

    pm = make_plugin_manager(entry_points=False)
    pm.register(EveryoneAtNoon(), name="noon")
    custom = Gateway(make_config(tmp_path), plugin_manager=pm)
    assert await planned_time(custom, profile, MONDAY, "run:1") == MONDAY + 12 * HOUR
    # Outside the window it is clamped: never before scheduled_at.
    assert await planned_time(custom, profile, MONDAY + 13 * HOUR, "run:1") == MONDAY + 13 * HOUR
