"""Reputation: rates, the health score and tiers against hand-computed cases; thresholds;
sticky pauses kept in a real SQLite store and visible to a second store instance."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import pytest

from gateway.clock import FakeClock
from gateway.events import Event
from gateway.reputation import (
    ESTABLISHED_THRESHOLDS,
    WARMING_THRESHOLDS,
    Counts,
    Reputation,
    breach,
    health_score,
    rates,
    sub_scores,
    tier,
)
from gateway.store.sqlite import SqliteStore


@pytest.mark.parametrize(
    ("counts", "engagement", "expected_score", "expected_tier"),
    [
        # Perfect: every sub-score 100.
        (Counts(delivered=1000, engaged=300), True, 100, "EXCELLENT"),
        # The docs' worked example: bounce 40/1000 = 4 % -> 60; complaint 2/960 = 0.2083 %
        # -> 58.33; delivery 960/1000 -> 80; engagement 96/960 = 10 % -> 50.
        # 0.35*60 + 0.35*58.33 + 0.15*80 + 0.15*50 = 60.92 -> 61.
        (Counts(delivered=960, bounced=40, complained=2, engaged=96), True, 61, "FAIR"),
        # No engagement data: the other weights scale up. bounce 1/100 -> 90, complaint 0 ->
        # 100, delivery 99/100 -> 95: (35*90 + 35*100 + 15*95) / 85 = 95.
        (Counts(delivered=99, bounced=1), False, 95, "EXCELLENT"),
        # bounce 2/100 -> 80; complaint 0 -> 100; delivery 98/100 -> 90; engagement 5/98 =
        # 5.10 % -> 25.51: 28 + 35 + 13.5 + 3.827 = 80.33 -> 80.
        (Counts(delivered=98, bounced=2, engaged=5), True, 80, "GOOD"),
        # bounce 5/100 -> 50; complaint 1/95 = 1.05 % -> 0; delivery 95/100 -> 75;
        # engagement 19/95 = 20 % -> 100: 17.5 + 0 + 11.25 + 15 = 43.75 -> 44.
        (Counts(delivered=95, bounced=5, complained=1, engaged=19), True, 44, "POOR"),
        # bounce 0 -> 100, complaint 1/1000 = 0.1 % -> 80, delivery 100 % -> 100, engagement
        # 200/1000 = 20 % -> 100: 35 + 28 + 15 + 15 = 93.
        (Counts(delivered=1000, complained=1, engaged=200), True, 93, "EXCELLENT"),
        # bounce 10/100 -> 0, complaint 0 -> 100, delivery 90/100 -> 50, engagement 0 -> 0:
        # 0 + 35 + 7.5 + 0 = 42.5 -> 43 (half up) -> POOR.
        (Counts(delivered=90, bounced=10, engaged=0), True, 43, "POOR"),
        # Everything bad: bounce 30 % -> 0, complaint 2/70 -> 0, delivery 70 % -> 0, no opens.
        (Counts(delivered=70, bounced=30, complained=2), True, 0, "CRITICAL"),
        # Deferrals lower only the delivery rate: 80 delivered, 20 deferred -> 80 % -> 0;
        # bounce 0 -> 100; complaint 0 -> 100: (35 + 35) * 100 / 85 = 82.35 -> 82.
        (Counts(delivered=80, deferred=20), False, 82, "GOOD"),
        # bounce 7 % -> 30, complaint 0 -> 100, delivery 93 % -> 65, no engagement data:
        # (35*30 + 35*100 + 15*65) / 85 = 5525 / 85 = 65 -> FAIR.
        (Counts(delivered=93, bounced=7), False, 65, "FAIR"),
        # Nothing known yet.
        (Counts(), True, None, "NO_DATA"),
    ],
)
def test_health_score_and_tier_match_hand_computed_values(
    counts: Counts, engagement: bool, expected_score: int | None, expected_tier: str
) -> None:
    score = health_score(rates(counts), engagement=engagement)
    assert score == expected_score
    assert tier(score) == expected_tier


def test_sub_scores_are_the_documented_linear_maps() -> None:
    r = rates(Counts(delivered=960, bounced=40, complained=2, engaged=96))
    assert r.bounce == Fraction(1, 25)
    assert sub_scores(r, engagement=True) == {
        "bounce": Fraction(60),
        "complaint": Fraction(175, 3),  # 100 * (1 - (2/960) / 0.005) = 58.33
        "delivery": Fraction(80),
        "engagement": Fraction(50),
    }


@pytest.mark.parametrize(
    ("score", "expected"),
    [(100, "EXCELLENT"), (90, "EXCELLENT"), (89, "GOOD"), (70, "GOOD"), (69, "FAIR"),
     (50, "FAIR"), (49, "POOR"), (30, "POOR"), (29, "CRITICAL"), (0, "CRITICAL")],
)  # fmt: skip
def test_tier_boundaries(score: int, expected: str) -> None:
    assert tier(score) == expected


@pytest.mark.parametrize(
    ("counts", "thresholds", "expected"),
    [
        (Counts(delivered=94, bounced=6), WARMING_THRESHOLDS, "bounce rate 6.00% above 5%"),
        (Counts(delivered=95, bounced=5), WARMING_THRESHOLDS, None),  # 5 % is not above 5 %
        (Counts(delivered=1000, complained=2), WARMING_THRESHOLDS, "complaint rate 0.20%"),
        (Counts(delivered=1000, complained=1), WARMING_THRESHOLDS, None),  # exactly 0.1 %
        (Counts(delivered=89, deferred=11), WARMING_THRESHOLDS, "delivery rate 89.00% below 90%"),
        (Counts(delivered=89, deferred=11), ESTABLISHED_THRESHOLDS, None),  # no delivery check
        (Counts(delivered=97, bounced=3), ESTABLISHED_THRESHOLDS, "bounce rate 3.00% above 2%"),
        (Counts(delivered=50, bounced=40), WARMING_THRESHOLDS, None),  # under min_sample
    ],
)
def test_thresholds(counts: Counts, thresholds, expected: str | None) -> None:
    reason = breach(counts, thresholds, min_sample=100)
    assert reason == expected if expected is None else reason is not None and expected in reason


def event(kind: str, n: int, **fields) -> Event:
    return Event(type=kind, tenant="t", recipient=f"r{n}@x.example", at=0.0, **fields)  # type: ignore[arg-type]


async def test_pause_is_sticky_in_the_store_until_resumed(tmp_path) -> None:
    clock = FakeClock()
    store = SqliteStore(tmp_path)
    await store.open()
    other = SqliteStore(tmp_path, write_shard=1)  # another worker process's view
    await other.open()
    try:
        rep = Reputation(store, clock, min_sample=100)
        who = [("domain", "brand.example")]
        for i in range(100):
            await rep.record(event("delivered", i, provider="relay"), who)  # type: ignore[arg-type]
        assert await rep.evaluate("domain", "brand.example", WARMING_THRESHOLDS) is None
        for i in range(2):
            await rep.record(event("complained", i), who)  # type: ignore[arg-type]
        pause = await rep.evaluate("domain", "brand.example", WARMING_THRESHOLDS)
        assert pause is not None and pause.reason.startswith("complaint rate 2.00% above 0.1%")
        # Seen by another process through the store.
        assert await Reputation(other, clock).pause_of("domain", "brand.example") == pause
        # Rates recover (2 / 2,100 = 0.095 %): still paused.
        await asyncio.gather(
            *(rep.record(event("delivered", i), who) for i in range(2000))  # type: ignore[arg-type]
        )
        health = await rep.health("domain", "brand.example")
        assert health.complaint_rate is not None and health.complaint_rate < 0.001
        assert (health.paused, health.pause_reason) == (True, pause.reason)
        assert await rep.evaluate("domain", "brand.example", WARMING_THRESHOLDS) == pause
        # The operator resumes; the same old complaints do not pause it again.
        assert await rep.resume("domain", "brand.example") is True
        assert await rep.resume("domain", "brand.example") is False
        await rep.record(event("delivered", 1), who)  # type: ignore[arg-type]
        assert await rep.evaluate("domain", "brand.example", WARMING_THRESHOLDS) is None
        assert (await rep.health("domain", "brand.example")).paused is False
    finally:
        await other.close()
        await store.close()


async def test_counting_rules(tmp_path) -> None:
    clock = FakeClock()
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        rep = Reputation(store, clock, window_days=2)
        who = [("ip", "198.51.100.7")]
        await rep.record(event("deferred", 1), who)  # type: ignore[arg-type]  # our own hold
        await rep.record(event("deferred", 2, provider="relay"), who)  # type: ignore[arg-type]
        await rep.record(event("bounced", 3, bounce="soft"), who)  # type: ignore[arg-type]
        await rep.record(event("bounced", 4, bounce="hard"), who)  # type: ignore[arg-type]
        # Machines' opens and clicks are not engagement: a scanner, Apple's prefetch.
        for label, kind in [("scanner", "opened"), ("proxy:apple-mpp", "opened"),
                            ("machine", "clicked")]:  # fmt: skip
            machine = event(kind, 5, message_id="m5", classification=label)
            await rep.record(machine, who)  # type: ignore[arg-type]
        assert (await rep.counts("ip", "198.51.100.7")).engaged == 0
        await rep.record(event("opened", 5, message_id="m5"), who)  # type: ignore[arg-type]
        await rep.record(event("clicked", 5, message_id="m5"), who)  # type: ignore[arg-type]
        dup = event("complained", 6, event_id="sns-1")
        await rep.record(dup, who)  # type: ignore[arg-type]
        await rep.record(dup, who)  # type: ignore[arg-type]  # the provider retried
        counts = await rep.counts("ip", "198.51.100.7")
        assert counts == Counts(deferred=2, bounced=1, engaged=1, complained=1)
        clock.advance(2 * 86400)  # the window rolls past them
        assert await rep.counts("ip", "198.51.100.7") == Counts()
    finally:
        await store.close()


async def test_deliveries_that_bring_the_sample_up_get_the_identity_judged(tmp_path) -> None:
    """10 bounces come first (too few to judge), then 90 deliveries: at 100 outcomes the
    bounce rate is 10 %. Deliveries are buffered in memory; once flushed, the identities they
    touched are handed out to be judged."""
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        rep = Reputation(store, FakeClock(), min_sample=100)
        who = [("domain", "brand.example")]
        for i in range(10):
            changed = await rep.record(event("bounced", i, bounce="hard"), who)  # type: ignore[arg-type]
            assert await rep.evaluate("domain", "brand.example", WARMING_THRESHOLDS) is None
        assert changed == who
        handed_out = []
        for i in range(90):
            handed_out += await rep.record(event("delivered", i), who)  # type: ignore[arg-type]
        await rep.flush()
        handed_out += rep.unjudged()
        assert set(handed_out) == set(who)
        assert rep.unjudged() == []  # each hand-out empties the set
        pause = await rep.evaluate("domain", "brand.example", WARMING_THRESHOLDS)
        assert pause is not None and pause.reason.startswith("bounce rate 10.00% above 5%")
    finally:
        await store.close()


async def test_each_delivery_counts_once_in_the_rate_of_its_final_fate(tmp_path) -> None:
    clock = FakeClock(10 * 86400 + 3600)
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        rep = Reputation(store, clock, window_days=7)
        who = [("domain", "brand.example")]

        def about(kind: str, n: int, event_id: str = "", **fields) -> Event:
            return event(kind, n, message_id=f"m{n}", event_id=event_id, **fields)

        for n in range(3):
            await rep.record(about("delivered", n, provider="ses"), who)  # type: ignore[arg-type]
            # The provider's webhook confirms the same delivery: not a second delivery.
            await rep.record(about("delivered", n, f"ses:d{n}", provider="ses"), who)  # type: ignore[arg-type]
        assert await rep.counts("domain", "brand.example") == Counts(delivered=3)

        clock.advance(86400)  # a day later, delivery 0 bounces after all
        await rep.record(about("bounced", 0, "ses:b0", bounce="hard"), who)  # type: ignore[arg-type]
        await rep.record(about("bounced", 0, "dsn:b0", bounce="hard"), who)  # type: ignore[arg-type]
        expected = Counts(delivered=2, bounced=1)
        assert await rep.counts("domain", "brand.example") == expected
        assert await rep.counts("domain", "brand.example", since_resume=True) == expected
        health = await rep.health("domain", "brand.example")
        assert health.counts == expected  # the score follows the same counts
    finally:
        await store.close()
