"""Variant assignment is a stable hash of (test, contact) within ±2 % of the split, and a
plugin's ``gateway_ab_decide`` replaces the built-in decision through a real gateway."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from gateway_plugins.ab_testing.assignment import assign
from gateway_plugins.ab_testing.decision import Look, Rules, Variant, decide, decide_look

from gateway.plugin_manager import hookimpl, make_plugin_manager
from gateway.server import Gateway
from tests.conftest import make_config

CONTACTS = [f"contact-{i}" for i in range(10_000)]


@pytest.mark.parametrize(("variants", "fraction"), [(2, None), (3, None), (2, 0.2), (5, 0.5)])
def test_assignment_follows_the_split_within_two_percent(
    variants: int, fraction: float | None
) -> None:
    counts = Counter(assign("campaign-7", c, variants, fraction) for c in CONTACTS)
    pool = 1.0 if fraction is None else fraction
    for index in range(variants):
        assert abs(counts[index] / len(CONTACTS) - pool / variants) <= 0.02, counts
    assert abs(counts[None] / len(CONTACTS) - (1 - pool)) <= 0.02, counts
    # Another test shuffles differently: assignment depends on the test, not only the contact.
    other = [assign("campaign-8", c, variants, fraction) for c in CONTACTS[:200]]
    assert other != [assign("campaign-7", c, variants, fraction) for c in CONTACTS[:200]]


def test_assignment_is_identical_across_processes() -> None:
    here = [assign("campaign-7", c, 3, 0.2) for c in CONTACTS[:500]]
    code = (
        "from gateway_plugins.ab_testing.assignment import assign\n"
        "print([assign('campaign-7', f'contact-{i}', 3, 0.2) for i in range(500)])"
    )
    # A different hash seed proves nothing depends on Python's randomized str hashing.
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    ).stdout
    assert out.strip() == repr(here)


def test_assignment_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="2 to 5 variants"):
        assign("t", "c", 6, None)
    with pytest.raises(ValueError, match="test_fraction"):
        assign("t", "c", 2, 0.0)


class AlwaysTheChallenger:
    @hookimpl
    def gateway_ab_decide(self, variants: list[Variant], rules: Rules, number: int) -> Look:
        return Look(
            number=number,
            alpha=rules.alpha,
            variants=[],
            outcome="winner",
            winner=variants[-1].name,
            reason="house rule",
        )


async def test_a_plugin_replaces_the_decision_rule(tmp_path: Path) -> None:
    variants = [Variant("A", 1000, 120), Variant("B", 1000, 150)]
    rules = Rules(test="chisquare")
    plain = Gateway(make_config(tmp_path), plugin_manager=make_plugin_manager(entry_points=False))
    assert await decide_look(plain, variants, rules, 1) == decide(variants, rules, 1)
    assert (await decide_look(plain, variants, rules, 1)).outcome == "fallback"

    pm = make_plugin_manager(entry_points=False)
    pm.register(AlwaysTheChallenger(), name="house_rule")
    custom = Gateway(make_config(tmp_path), plugin_manager=pm)
    look = await decide_look(custom, variants, rules, 1)
    assert (look.outcome, look.winner, look.reason) == ("winner", "B", "house rule")
