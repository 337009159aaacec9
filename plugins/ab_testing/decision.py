"""The decision rule at a planned look of an A/B test.

Looks are planned in advance, evenly between ``decide_after`` and ``max_wait``, and the
significance level is split evenly across them (Bonferroni): peeking at every look cannot raise
the false-positive rate above ``alpha``. At a look:

1. every variant needs ``min_sample`` recipients, else the test waits;
2. with two variants, the configured test (pooled z-test, or chi-square with Yates'
   correction) at ``alpha / looks``; the other test is computed and reported too;
3. with more, the omnibus chi-square over all variants first, then best against runner-up at
   ``alpha / looks / (k - 1)``;
4. a significant best variant wins; otherwise the test waits, and at the last look falls back
   to the control, to the best observed rate, or holds, as configured.

Every look is returned whole (counts, rates, Wilson intervals, both statistics, the reason), so
the campaign can store and serve it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from gateway_plugins.ab_testing.statistics import chi_square, two_proportion_ztest, wilson_interval

from gateway.plugin_manager import call_first

Test = Literal["ztest", "chisquare"]
Fallback = Literal["control", "best", "hold"]
Outcome = Literal["winner", "wait", "fallback", "hold"]


class Variant(msgspec.Struct, frozen=True):
    """Recipients (``n``) and those who did the metric (``x``: unique human opens, …)."""

    name: str
    n: int
    x: int


class Rules(msgspec.Struct, frozen=True):
    test: Test = "ztest"
    alpha: float = 0.05
    looks: int = 1
    min_sample: int = 100
    fallback: Fallback = "control"


class VariantResult(msgspec.Struct, frozen=True):
    name: str
    n: int
    x: int
    rate: float
    wilson_low: float
    wilson_high: float


class Look(msgspec.Struct, frozen=True, kw_only=True):
    number: int
    """1-based index of this look among ``Rules.looks``."""
    alpha: float
    """The level this look decides at (``alpha / looks``, divided again for best vs runner-up
    when there are more than two variants)."""
    variants: list[VariantResult]
    compared: tuple[str, str] | None = None
    """The pair the two-sample tests compare: the best and the runner-up by rate."""
    z: float | None = None
    z_p_value: float | None = None
    chi2: float | None = None
    chi2_p_value: float | None = None
    omnibus_chi2: float | None = None
    omnibus_p_value: float | None = None
    outcome: Outcome = "wait"
    winner: str | None = None
    reason: str = ""


def planned_looks(decide_after: float, max_wait: float, looks: int) -> list[float]:
    """The times of the looks: the first at ``decide_after``, the last at ``max_wait``."""
    if looks == 1:
        return [max_wait]
    step = (max_wait - decide_after) / (looks - 1)
    return [decide_after + i * step for i in range(looks)]


def decide(variants: Sequence[Variant], rules: Rules, number: int) -> Look:
    """The decision at look ``number`` (1-based); ``variants[0]`` is the control."""
    if not 2 <= len(variants) <= 5:
        raise ValueError("an A/B test has 2 to 5 variants")
    results = [
        VariantResult(
            name=v.name,
            n=v.n,
            x=v.x,
            rate=v.x / v.n if v.n else 0.0,
            wilson_low=wilson_interval(v.x, v.n)[0],
            wilson_high=wilson_interval(v.x, v.n)[1],
        )
        for v in variants
    ]
    last = number >= rules.looks
    level = rules.alpha / rules.looks
    empty = Look(number=number, alpha=level, variants=results)
    small = [v.name for v in variants if v.n < rules.min_sample]
    if small:
        reason = f"fewer than {rules.min_sample} recipients in {', '.join(small)}"
        return _conclude(empty, rules, last, reason, variants)

    ranked = sorted(range(len(variants)), key=lambda i: (-results[i].rate, i))
    best, runner_up = variants[ranked[0]], variants[ranked[1]]
    look = empty
    if len(variants) > 2:
        omnibus = chi_square([v.x for v in variants], [v.n for v in variants])
        look = msgspec.structs.replace(
            look, omnibus_chi2=omnibus.statistic, omnibus_p_value=omnibus.p_value
        )
        if omnibus.p_value >= level:
            reason = f"omnibus chi-square p = {omnibus.p_value:.5g} ≥ {level:.5g}"
            return _conclude(look, rules, last, reason, variants)
        level /= len(variants) - 1
    z = two_proportion_ztest(best.x, best.n, runner_up.x, runner_up.n)
    chi = chi_square([best.x, runner_up.x], [best.n, runner_up.n])
    look = msgspec.structs.replace(
        look,
        alpha=level,
        compared=(best.name, runner_up.name),
        z=z.z,
        z_p_value=z.p_value,
        chi2=chi.statistic,
        chi2_p_value=chi.p_value,
    )
    p_value = z.p_value if rules.test == "ztest" else chi.p_value
    test = "z-test" if rules.test == "ztest" else "chi-square (Yates)"
    if p_value < level:
        return msgspec.structs.replace(
            look,
            outcome="winner",
            winner=best.name,
            reason=f"{best.name} beats {runner_up.name}: {test} p = {p_value:.5g} < {level:.5g}",
        )
    reason = f"{best.name} vs {runner_up.name}: {test} p = {p_value:.5g} ≥ {level:.5g}"
    return _conclude(look, rules, last, reason, variants)


async def decide_look(gateway: Any, variants: Sequence[Variant], rules: Rules, number: int) -> Look:
    """The decision at a look: a plugin's ``gateway_ab_decide`` if one answers, else
    :func:`decide`."""
    look: Look | None = await call_first(
        gateway.pm,
        "gateway_ab_decide",
        gateway=gateway,
        variants=list(variants),
        rules=rules,
        number=number,
    )
    if look is None:
        return decide(variants, rules, number)
    if not isinstance(look, Look):
        raise TypeError(f"gateway_ab_decide returned {type(look).__name__}, not a Look")
    return look


def _conclude(
    look: Look, rules: Rules, last: bool, reason: str, variants: Sequence[Variant]
) -> Look:
    """Wait, or at the last look apply the fallback."""
    if not last:
        return msgspec.structs.replace(look, outcome="wait", reason=reason)
    if rules.fallback == "hold":
        return msgspec.structs.replace(
            look, outcome="hold", reason=f"{reason}; nothing significant by max_wait: holding"
        )
    if rules.fallback == "control":
        chosen = variants[0].name
    else:
        chosen = max(variants, key=lambda v: v.x / v.n if v.n else 0.0).name
    return msgspec.structs.replace(
        look,
        outcome="fallback",
        winner=chosen,
        reason=f"{reason}; nothing significant by max_wait: {rules.fallback} ({chosen})",
    )
