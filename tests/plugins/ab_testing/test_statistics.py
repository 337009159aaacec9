"""The A/B statistics agree with statsmodels and scipy (test-only dependencies) to 1e-9."""

from __future__ import annotations

import random

import pytest
from gateway_plugins.ab_testing.decision import Rules, Variant, decide, planned_looks
from gateway_plugins.ab_testing.statistics import (
    chi_square,
    two_proportion_ztest,
    wilson_interval,
)
from scipy.stats import chi2_contingency
from statsmodels.stats.proportion import proportion_confint, proportions_ztest

TOLERANCE = 1e-9


def random_cases(count: int, seed: int) -> list[tuple[int, int, int, int]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        n1, n2 = rng.randint(20, 20_000), rng.randint(20, 20_000)
        cases.append((rng.randint(1, n1 - 1), n1, rng.randint(1, n2 - 1), n2))
    return cases


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), random_cases(200, seed=24))
def test_z_wilson_and_chi_square_equal_the_reference_libraries(
    x1: int, n1: int, x2: int, n2: int
) -> None:
    z, p = proportions_ztest([x1, x2], [n1, n2])
    ours = two_proportion_ztest(x1, n1, x2, n2)
    assert ours.z == pytest.approx(z, abs=TOLERANCE)
    assert ours.p_value == pytest.approx(p, abs=TOLERANCE)
    low, high = proportion_confint(x1, n1, method="wilson")
    assert wilson_interval(x1, n1) == pytest.approx((low, high), abs=TOLERANCE)
    for yates in (True, False):
        statistic, p_value, dof, _ = chi2_contingency(
            [[x1, x2], [n1 - x1, n2 - x2]], correction=yates
        )
        test = chi_square([x1, x2], [n1, n2], yates=yates)
        assert (test.statistic, test.p_value, test.dof) == pytest.approx(
            (statistic, p_value, dof), abs=TOLERANCE
        )


@pytest.mark.parametrize("k", [3, 4, 5])
def test_the_omnibus_chi_square_over_k_variants_equals_scipy(k: int) -> None:
    rng = random.Random(k)
    for _ in range(50):
        trials = [rng.randint(50, 5_000) for _ in range(k)]
        successes = [rng.randint(1, n - 1) for n in trials]
        statistic, p_value, dof, _ = chi2_contingency(
            [successes, [n - x for x, n in zip(successes, trials, strict=True)]]
        )
        test = chi_square(successes, trials)
        assert not test.yates and test.dof == dof == k - 1
        assert (test.statistic, test.p_value) == pytest.approx((statistic, p_value), abs=TOLERANCE)


def test_the_fixed_case_is_a_winner_by_z_and_not_by_chi_square_with_yates() -> None:
    variants = [Variant("control", 1000, 120), Variant("b", 1000, 150)]
    by_z = decide(variants, Rules(test="ztest"), 1)
    assert by_z.outcome == "winner" and by_z.winner == "b"
    assert round(by_z.z_p_value or 0, 5) == 0.04964
    by_chi = decide(variants, Rules(test="chisquare", fallback="hold"), 1)
    assert by_chi.outcome == "hold" and by_chi.winner is None
    assert round(by_chi.chi2_p_value or 0, 5) == 0.05775
    assert by_chi.z_p_value == by_z.z_p_value  # the other test is reported too
    (control, b) = by_z.variants
    assert (control.rate, b.rate) == (0.12, 0.15)
    assert control.wilson_low < 0.12 < control.wilson_high


def test_a_small_sample_waits_then_falls_back_as_configured() -> None:
    variants = [Variant("control", 50, 5), Variant("b", 50, 20)]
    assert decide(variants, Rules(looks=2), 1).outcome == "wait"
    last = decide(variants, Rules(looks=2, fallback="best"), 2)
    assert (last.outcome, last.winner) == ("fallback", "b")
    assert "fewer than 100 recipients" in last.reason
    control = decide(variants, Rules(looks=2, fallback="control"), 2)
    assert (control.outcome, control.winner) == ("fallback", "control")


def test_more_variants_need_the_omnibus_then_best_against_runner_up() -> None:
    variants = [Variant("a", 2000, 200), Variant("b", 2000, 205), Variant("c", 2000, 290)]
    look = decide(variants, Rules(), 1)
    assert look.omnibus_p_value is not None and look.omnibus_p_value < 0.05
    assert look.compared == ("c", "b") and look.alpha == pytest.approx(0.05 / 2)
    assert (look.outcome, look.winner) == ("winner", "c")


def test_planned_looks_span_decide_after_to_max_wait() -> None:
    assert planned_looks(3600, 4 * 3600, 4) == [3600, 7200, 10800, 14400]
    assert planned_looks(3600, 7200, 1) == [7200]


def test_peeking_at_planned_looks_keeps_the_false_positive_rate_within_alpha() -> None:
    """2,000 A/A tests (both variants 10 %), 4 looks each: tests that declare a winner at any
    look stay within alpha's binomial 99 % upper bound."""
    rng = random.Random(2000)
    rules, per_look, simulations = Rules(looks=4, alpha=0.05), 250, 2000
    false_positives = 0
    for _ in range(simulations):
        x = [0, 0]
        for look in range(1, rules.looks + 1):
            for i in range(2):
                x[i] += sum(rng.random() < 0.10 for _ in range(per_look))
            n = look * per_look
            if decide([Variant("a", n, x[0]), Variant("b", n, x[1])], rules, look).outcome == (
                "winner"
            ):
                false_positives += 1
                break
    bound = simulations * 0.05 + 2.576 * (simulations * 0.05 * 0.95) ** 0.5
    assert false_positives <= bound, (false_positives, bound)
