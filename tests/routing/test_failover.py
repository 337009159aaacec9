"""Failover acceptance: a failing primary sends traffic to the secondary, its breaker opens,
then closes once the primary recovers — and no message reaches a provider twice.

Real relays to real sink SMTP servers on loopback; the gateway's clock is a ``FakeClock``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.message import DeliveryStatus
from tests.conftest import Sink
from tests.routing.support import (
    SilentServer,
    StallingSink,
    attempts_of,
    delivery_of,
    run_once,
    start_gateway,
    submit,
)

BREAKER = """
[routing.breaker]
failures = 3
cooldown = "30s"
"""


@pytest.fixture
def second_sink() -> Iterator[Sink]:
    server = Sink()
    server.start()
    yield server
    server.stop()


def copies(recipient: str, *sinks: Sink) -> int:
    return sum(len(s.to(recipient)) for s in sinks)


@pytest.mark.parametrize(
    "failure", ["451 4.3.0 overloaded, try later", "421 4.3.2 service shutting down"]
)
def test_failing_primary_fails_over_opens_its_breaker_and_recovers(
    tmp_path: Path, sink: Sink, second_sink: Sink, gateway_factory, failure: str
) -> None:
    primary, secondary = sink, second_sink
    gw, clock = start_gateway(
        gateway_factory, tmp_path, primary=primary.port, secondary=secondary.port, extra=BREAKER
    )
    router = gw.gateway.router
    failing = [f"u{i}@example.org" for i in range(1, 4)]
    for rcpt in failing:
        primary.script(rcpt, "RCPT", [failure])

    for rcpt in failing:  # one at a time, so the order of the failures is known
        submit(gw, rcpt)
        assert run_once(gw) == 1
        assert delivery_of(gw, rcpt).status is DeliveryStatus.DELIVERED
        assert [(a.provider, a.outcome) for a in attempts_of(gw, rcpt)] == [
            ("primary", "soft_fail"),
            ("secondary", "sent"),
        ]
    assert router.breaker_states()["primary"] == "open"
    assert router.breaker_states()["secondary"] == "closed"

    # While open, the primary is not even tried.
    submit(gw, "u4@example.org")
    assert run_once(gw) == 1
    assert [a.provider for a in attempts_of(gw, "u4@example.org")] == ["secondary"]

    # The primary has recovered (its script is used up); after the cooldown one probe goes
    # through, succeeds, and closes the breaker.
    clock.advance(29)
    assert router.breaker_states()["primary"] == "open"
    clock.advance(1)
    assert router.breaker_states()["primary"] == "half_open"
    submit(gw, "u5@example.org")
    assert run_once(gw) == 1
    assert [a.provider for a in attempts_of(gw, "u5@example.org")] == ["primary"]
    assert router.breaker_states()["primary"] == "closed"
    submit(gw, "u6@example.org")
    assert run_once(gw) == 1
    assert len(primary.to("u6@example.org")) == 1

    # Every message arrived exactly once, at one provider.
    for rcpt in [*failing, "u4@example.org", "u5@example.org", "u6@example.org"]:
        assert copies(rcpt, primary, secondary) == 1, rcpt
    stats = router.provider_stats()
    assert stats["primary"]["failed"] == 3 and stats["primary"]["sent"] == 2
    assert stats["primary"]["opened"] == 1
    assert stats["secondary"]["sent"] == 4 and stats["secondary"]["failed"] == 0


def test_a_primary_that_times_out_before_the_hand_over_fails_over(
    tmp_path: Path, second_sink: Sink, gateway_factory
) -> None:
    silent = SilentServer()
    silent.start()
    try:
        gw, _ = start_gateway(
            gateway_factory, tmp_path, primary=silent.port, secondary=second_sink.port, timeout=1
        )
        submit(gw, "t1@example.org")
        assert run_once(gw) == 1
        first, second = attempts_of(gw, "t1@example.org")
        assert (first.provider, first.outcome) == ("primary", "soft_fail")
        assert "cannot connect" in first.detail
        assert (second.provider, second.outcome) == ("secondary", "sent")
        assert len(second_sink.to("t1@example.org")) == 1
        assert silent.connections == 1
    finally:
        silent.stop()


def test_a_timeout_after_the_hand_over_is_not_sent_elsewhere(
    tmp_path: Path, second_sink: Sink, gateway_factory
) -> None:
    """The primary read the whole message and did not answer in time: it may have accepted
    it, so sending it through the secondary now could deliver it twice (RFC 1047)."""
    stalling = StallingSink()
    stalling.start()
    try:
        gw, clock = start_gateway(
            gateway_factory, tmp_path, primary=stalling.port, secondary=second_sink.port, timeout=1
        )
        submit(gw, "s1@example.org")
        assert run_once(gw) == 1
        assert stalling.data_seen == [["s1@example.org"]]
        deferred = delivery_of(gw, "s1@example.org")
        assert deferred.status is DeliveryStatus.DEFERRED
        assert deferred.next_attempt_at == clock.now() + 300  # the retry schedule, not at once
        (only,) = attempts_of(gw, "s1@example.org")
        assert (only.provider, only.outcome) == ("primary", "soft_fail")
        assert "no reply after the message data" in only.detail
        assert second_sink.to("s1@example.org") == []
        assert gw.gateway.router.provider_stats()["primary"]["timeouts"] == 1
    finally:
        stalling.stop()
