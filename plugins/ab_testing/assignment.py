"""Which variant of an A/B test a contact gets: a pure function of (test, contact).

The contact's position is a uniform number in [0, 1) from SHA-256 of the test and contact ids,
so an assignment never changes across reruns, restarts or nodes, and needs no stored state to
reproduce. With a test fraction ``f`` (e.g. 0.2), positions below ``f`` form the test pool,
split evenly between the variants; the rest wait for the winner (``None``). Without one,
everyone is split evenly.
"""

from __future__ import annotations

import hashlib

_SCALE = float(2**64)


def position(test_id: str, contact_id: str) -> float:
    """The contact's stable position in [0, 1) for this test."""
    digest = hashlib.sha256(f"{test_id}\x00{contact_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign(test_id: str, contact_id: str, variants: int, test_fraction: float | None) -> int | None:
    """The variant index (0 = control) of ``contact_id``, or ``None`` when the contact is
    outside the test pool and gets the winner later."""
    if not 2 <= variants <= 5:
        raise ValueError("an A/B test has 2 to 5 variants")
    if test_fraction is not None and not 0 < test_fraction <= 1:
        raise ValueError("test_fraction must be in (0, 1]")
    where = position(test_id, contact_id)
    fraction = 1.0 if test_fraction is None else test_fraction
    if where >= fraction:
        return None
    return min(int(where / fraction * variants), variants - 1)
