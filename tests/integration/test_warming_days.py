"""21 simulated days of the conservative warming schedule, through a real gateway to a real sink.

Every day more mail arrives than the day's cap allows. Each day exactly the cap reaches the
sink, the rest is deferred to the next midnight (in the configured zone, across a DST change)
and delivered on a later day before newer mail; after the schedule ends, everything left is
delivered and nothing is lost or sent twice.

Volume: the conservative schedule at ``scale = 0.005`` (day 1: 1, day 7: 5, day 14: 75,
day 21: 500 — 2,023 in all, plus a tenth more each day). The unscaled caps (50 … 100,000;
404,156 messages) are checked exactly in tests/plugins/test_warming.py, and the first three
days run unscaled here too (50, 82, 136); relaying all 21 unscaled days to a sink would take
many minutes.
"""

from __future__ import annotations

import collections
import datetime as dt
import smtplib
import zoneinfo

from gateway.clock import FakeClock
from gateway.message import DeliveryStatus
from gateway.store.base import DeliveryFilter
from tests.conftest import RELAY_TO_SINK, GatewayThread, Sink, make_config

ZONE = zoneinfo.ZoneInfo("America/New_York")
START = dt.date(2030, 3, 1)  # US daylight saving time starts on 2030-03-10: a 23-hour day
CAPS = [1, 1, 1, 1, 2, 3, 5, 7, 11, 16, 24, 35, 51, 75, 98, 129, 169, 222, 291, 381, 500]
"""Conservative at scale 0.005: round-half-up of 0.005 x the daily volume, at least 1."""

CONFIG = (
    RELAY_TO_SINK
    + """
[domains."brand.example"]
warming_schedule = "conservative"
warming_start = 2030-03-01

[plugins.warming]
timezone = "America/New_York"
scale = 0.005
"""
)


def midnight(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time(0), ZONE).timestamp()


def submit(gw: GatewayThread, recipients: list[str]) -> None:
    body = b"From: news@brand.example\r\nSubject: Warming\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        for start in range(0, len(recipients), 100):  # the listener's recipient limit
            client.sendmail("news@brand.example", recipients[start : start + 100], body)


def pending(gw: GatewayThread) -> list[str]:
    waiting = gw.call(
        gw.gateway.store.list_deliveries(
            DeliveryFilter(statuses=[DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED], limit=10**6)
        )
    )
    return [d.recipient for d in waiting]


def test_21_days_of_conservative_warming_deliver_the_cap_and_defer_the_rest(
    tmp_path, sink: Sink, gateway_factory
) -> None:
    clock = FakeClock(midnight(START) + 3600)
    config = make_config(tmp_path, CONFIG, port=sink.port)
    config.delivery.max_lifetime = "60d"  # the early backlog waits for days at 1 a day
    gw = gateway_factory(config, clock=clock, deliver=False)
    warming = gw.gateway.plugin_state["warming"]
    submitted: list[str] = []
    fair_days = 0
    for day, cap in enumerate(CAPS, start=1):
        date = START + dt.timedelta(days=day - 1)
        clock.set(midnight(date) + 3600)  # 01:00 local, whatever the day's length
        backlog = pending(gw)
        new = [f"d{day}-{i}@inbox.example" for i in range(cap + max(2, cap // 10))]
        submit(gw, new)
        submitted += new
        before = len(sink.messages)
        gw.call(gw.gateway.dispatcher.run_once())
        delivered_today = [r for m in sink.messages[before:] for r in m.rcpt_tos]
        assert len(delivered_today) == cap, f"day {day}"
        waiting = pending(gw)
        assert len(waiting) == len(backlog) + len(new) - cap, f"day {day}"
        if cap >= len(backlog):  # fair: yesterday's deferred mail goes before today's
            assert set(backlog) <= set(delivered_today), f"day {day}"
            fair_days += 1
        status = gw.call(warming.status(warming.domains["brand.example"]))
        assert (status.day, status.cap_today, status.sent_today) == (day, cap, cap)
        assert status.deferred_today == len(waiting)
        (deferred, *_) = gw.call(
            gw.gateway.store.list_deliveries(
                DeliveryFilter(statuses=[DeliveryStatus.DEFERRED], limit=1)
            )
        )
        assert deferred.next_attempt_at == midnight(date + dt.timedelta(days=1))
        assert deferred.attempts == 0  # held back, not failed
        assert "warming cap of domain brand.example reached" in deferred.last_error
        # Nothing more goes out later the same day.
        clock.set(midnight(date + dt.timedelta(days=1)) - 1)
        assert gw.call(gw.gateway.dispatcher.run_once()) == 0
    assert fair_days >= 10
    # Day 22: warmed up, no cap; the rest goes out.
    clock.set(midnight(START + dt.timedelta(days=21)) + 3600)
    gw.call(gw.gateway.dispatcher.run_once())
    assert pending(gw) == []
    received = collections.Counter(r for m in sink.messages for r in m.rcpt_tos)
    assert received == collections.Counter(submitted)  # every message once: none lost or doubled
    status = gw.call(warming.status(warming.domains["brand.example"]))
    assert (status.phase, status.cap_today) == ("warmed", None)


def test_the_first_days_of_conservative_at_full_volume(
    tmp_path, sink: Sink, gateway_factory
) -> None:
    """Unscaled: days 1-3 deliver exactly 50, 82 and 136 while 10 more than the cap arrive each
    day; the backlog grows by 10 a day and waits."""
    clock = FakeClock(midnight(START) + 3600)
    config = make_config(tmp_path, CONFIG.replace("scale = 0.005\n", ""), port=sink.port)
    gw = gateway_factory(config, clock=clock, deliver=False)
    for day, cap in enumerate((50, 82, 136), start=1):
        clock.set(midnight(START + dt.timedelta(days=day - 1)) + 3600)
        submit(gw, [f"d{day}-{i}@inbox.example" for i in range(cap + 10)])
        before = len(sink.messages)
        gw.call(gw.gateway.dispatcher.run_once())
        assert len(sink.messages) - before == cap, f"day {day}"
        assert len(pending(gw)) == 10 * day, f"day {day}"  # 10 more each day wait
