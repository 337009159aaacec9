"""The circuit breaker on its own, with the clock moved by hand."""

from __future__ import annotations

from gateway.breaker import CircuitBreaker
from gateway.clock import FakeClock
from gateway.config import BreakerSection


def make(clock: FakeClock, **settings: object) -> tuple[CircuitBreaker, list[str]]:
    changes: list[str] = []
    breaker = CircuitBreaker(
        "primary",
        BreakerSection(**settings),  # type: ignore[arg-type]
        clock,
        on_change=lambda name, state: changes.append(f"{name}:{state}"),
    )
    return breaker, changes


def test_opens_after_consecutive_failures_and_refuses_sends() -> None:
    clock = FakeClock()
    breaker, changes = make(clock, failures=3)
    for _ in range(2):
        assert breaker.allow()
        breaker.record(False, "451 later")
    assert breaker.state == "closed"
    breaker.record(False, "451 later")
    assert breaker.state == "open" and changes == ["primary:open"]
    assert not breaker.allow()
    assert breaker.retry_at == clock.now() + 30
    assert breaker.last_error == "451 later"


def test_a_success_resets_the_consecutive_count() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failures=3, min_sends=100)
    for outcome in (False, False, True, False, False):
        breaker.record(outcome)
    assert breaker.state == "closed"


def test_opens_on_the_error_rate_within_the_window() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failures=100, error_rate=0.5, min_sends=10, window="60s")
    for i in range(9):  # alternate: never two failures in a row
        breaker.record(i % 2 == 0)
        clock.advance(1)
    assert breaker.state == "closed"  # 4 of 9 failed, and fewer than min_sends
    breaker.record(False)
    assert breaker.state == "open"  # 5 of 10


def test_old_failures_leave_the_window() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failures=100, error_rate=0.5, min_sends=4, window="10s")
    breaker.record(False)
    breaker.record(False)
    clock.advance(11)
    breaker.record(True)
    breaker.record(True)
    breaker.record(False)
    assert breaker.state == "closed"  # 1 of 3 within the last 10 s


def test_half_open_after_the_cooldown_then_closes_on_success() -> None:
    clock = FakeClock()
    breaker, changes = make(clock, failures=1, cooldown="30s", probes=1)
    breaker.record(False, "down")
    clock.advance(29)
    assert breaker.state == "open"
    clock.advance(1)
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow()  # one probe at a time
    breaker.record(True)
    assert breaker.state == "closed"
    assert changes == ["primary:open", "primary:half_open", "primary:closed"]
    assert breaker.opened == 1


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failures=1, cooldown="30s")
    breaker.record(False)
    clock.advance(30)
    assert breaker.allow()
    breaker.record(False, "still down")
    assert breaker.state == "open"
    assert breaker.retry_at == clock.now() + 30
    assert breaker.opened == 2
