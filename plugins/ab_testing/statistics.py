"""Exact statistics for comparing proportions (opens, clicks, conversions per recipient).

Small, dependency-free functions that agree with statsmodels' ``proportion_confint(method=
"wilson")`` and ``proportions_ztest`` and scipy's ``chi2_contingency`` to within 1e-9
(``tests/plugins/ab_testing/test_statistics.py`` checks them against those libraries, which
are test-only dependencies). The normal distribution is the standard library's
``statistics.NormalDist``; the chi-square tail is the regularized upper incomplete gamma
function, by series or continued fraction (Numerical Recipes §6.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import msgspec

_NORMAL = NormalDist()


class ZTest(msgspec.Struct, frozen=True):
    """Pooled two-proportion z-test, two-sided."""

    z: float
    p_value: float


class ChiSquare(msgspec.Struct, frozen=True):
    """Pearson's chi-square test of a 2xk table (successes and failures per variant)."""

    statistic: float
    p_value: float
    dof: int
    yates: bool


def wilson_interval(x: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for ``x`` successes in ``n`` trials; ``(0, 1)`` for ``n == 0``."""
    if n == 0:
        return 0.0, 1.0
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    p = x / n
    z2n = z * z / n
    denominator = 1 + z2n
    center = (p + z2n / 2) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / denominator
    return center - half, center + half


def two_proportion_ztest(x1: int, n1: int, x2: int, n2: int) -> ZTest:
    """H0: both proportions are equal, with the pooled variance (statsmodels' default)."""
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance == 0:
        return ZTest(z=0.0, p_value=1.0)
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return ZTest(z=z, p_value=math.erfc(abs(z) / math.sqrt(2)))


def chi_square(successes: Sequence[int], trials: Sequence[int], *, yates: bool = True) -> ChiSquare:
    """Chi-square test of independence on the 2xk table of successes and failures.

    As scipy's ``chi2_contingency``, Yates' continuity correction applies only to a 2x2 table
    (one degree of freedom), and only when ``yates`` is true.
    """
    table = [list(successes), [n - x for x, n in zip(successes, trials, strict=True)]]
    total = sum(trials)
    row_totals = [sum(row) for row in table]
    dof = len(trials) - 1
    correct = yates and dof == 1
    statistic = 0.0
    for row, row_total in zip(table, row_totals, strict=True):
        for observed, column_total in zip(row, trials, strict=True):
            expected = row_total * column_total / total
            if expected == 0:
                continue
            difference = abs(observed - expected)
            if correct:  # scipy's form: the correction never overshoots the difference
                difference -= min(0.5, difference)
            statistic += difference * difference / expected
    return ChiSquare(
        statistic=statistic, p_value=chi2_survival(statistic, dof), dof=dof, yates=correct
    )


def chi2_survival(x: float, dof: int) -> float:
    """P(X > x) for a chi-square variable with ``dof`` degrees of freedom."""
    if x <= 0:
        return 1.0
    return _upper_gamma_regularized(dof / 2, x / 2)


def _upper_gamma_regularized(a: float, x: float) -> float:
    if x < a + 1:
        return 1.0 - _lower_series(a, x)
    return _upper_continued_fraction(a, x)


def _lower_series(a: float, x: float) -> float:
    term = total = 1.0 / a
    denominator = a
    for _ in range(10_000):
        denominator += 1
        term *= x / denominator
        total += term
        if abs(term) < abs(total) * 1e-16:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _upper_continued_fraction(a: float, x: float) -> float:
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h
