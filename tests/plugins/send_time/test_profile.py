"""Send-time profiles and plans equal an independent recomputation of the documented formula."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from gateway_plugins.send_time.profile import (
    DAY,
    HOUR,
    Engagement,
    build_profile,
    minute_offset,
    plan_send,
)

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC).timestamp()


def recompute(events: list[Engagement], now: float) -> tuple[int, int, float] | None:
    """The formula of plugins/send_time/profile.py, written again from datetime."""
    recent = [e for e in events if now - 90 * 86400 <= e.at <= now]
    if not recent:
        return None
    hours, days = [0.0] * 24, [0.0] * 7
    for e in recent:
        moment = dt.datetime.fromtimestamp(int(e.at), dt.UTC)
        weight = 2 if e.kind == "clicked" else 1
        hours[moment.hour] += weight
        days[moment.weekday()] += weight
    smooth_h = [hours[(h - 1) % 24] + hours[h] + hours[(h + 1) % 24] for h in range(24)]
    smooth_d = [days[(d - 1) % 7] + days[d] + days[(d + 1) % 7] for d in range(7)]
    best_h = min(h for h in range(24) if smooth_h[h] == max(smooth_h))
    best_d = min(d for d in range(7) if smooth_d[d] == max(smooth_d))
    return best_h, best_d, smooth_h[best_h] / sum(smooth_h) * min(1.0, len(recent) / 10)


def history(rng: random.Random) -> list[Engagement]:
    favourite = rng.randrange(24)
    events = []
    for _ in range(rng.choice([0, rng.randint(1, 30)])):
        hour = favourite if rng.random() < 0.85 else rng.randrange(24)
        at = NOW - rng.randint(0, 100) * DAY - ((NOW % DAY) - hour * HOUR) + rng.randrange(HOUR)
        events.append(Engagement(at=at, kind=rng.choice(["opened", "opened", "clicked"])))
    return events


def test_profiles_of_seeded_histories_equal_the_recomputation() -> None:
    rng = random.Random(24)
    for _ in range(1000):
        events = history(rng)
        profile = build_profile(events, NOW)
        expected = recompute(events, NOW)
        if expected is None:
            assert profile is None
            continue
        assert profile is not None
        assert (profile.best_hour, profile.best_weekday) == expected[:2]
        assert profile.confidence == pytest.approx(expected[2], abs=1e-12)


def test_ties_take_the_earliest_hour_and_hour_23_neighbours_hour_0() -> None:
    midnight = NOW - NOW % DAY
    tie = [Engagement(at=midnight - DAY + h * HOUR, kind="opened") for h in (5, 15)] * 5
    profile = build_profile(tie, NOW)
    assert profile is not None and profile.best_hour == 4  # 4, 5, 6 and 14, 15, 16 tie: earliest
    wrap = [Engagement(at=midnight - DAY + h * HOUR, kind="clicked") for h in (23, 1)] * 5
    wrapped = build_profile(wrap, NOW)
    assert wrapped is not None and wrapped.best_hour == 0  # 23 + 0 + 1, across midnight


def test_planned_times_follow_the_best_hour_inside_the_window() -> None:
    rng = random.Random(7)
    checked = 0
    for contact in range(1000):
        profile = build_profile(history(rng), NOW)
        scheduled = NOW + rng.randrange(DAY)
        window = rng.choice([DAY, DAY, 7 * DAY, 3 * HOUR])
        key = f"campaign-1:{contact}"
        planned = plan_send(profile, scheduled, key, window)
        assert scheduled <= planned < scheduled + window
        if profile is None or profile.confidence < 0.3:
            assert planned == scheduled
            continue
        moment = dt.datetime.fromtimestamp(planned, dt.UTC)
        in_best_hour = moment.hour == profile.best_hour and (
            window < 7 * DAY or moment.weekday() == profile.best_weekday
        )
        if not in_best_hour:
            assert planned == scheduled  # the best hour is not in this window
            continue
        checked += 1
        hour_start = planned - planned % HOUR
        assert planned == max(hour_start + minute_offset(key), scheduled)
        # no earlier best hour fits in the window
        earlier = hour_start - (7 * DAY if window >= 7 * DAY else DAY)
        assert earlier + HOUR <= scheduled
    assert checked > 100  # enough plans land in a best hour to mean something


def test_a_low_confidence_profile_sends_at_the_scheduled_time() -> None:
    few = [Engagement(at=NOW - DAY, kind="opened")]
    profile = build_profile(few, NOW)
    assert profile is not None and profile.confidence < 0.3
    assert plan_send(profile, NOW + 60, "k") == NOW + 60
