"""Page tokens: purpose-bound, expiring, signed with a key id; every refusal has a reason."""

from __future__ import annotations

import secrets

import pytest
from gateway_plugins.audience.page_tokens import LIFETIMES, PageTokenError, PageTokens

OLD, NEW = secrets.token_urlsafe(32), secrets.token_urlsafe(32)


def test_round_trip_rotation_and_every_refusal() -> None:
    old = PageTokens({"k1": OLD}, "k1")
    token = old.sign("confirm", "acme", 7, 3, now=1000.0)
    payload = old.verify(token, "confirm", now=1000.0 + LIFETIMES["confirm"] - 1)
    assert (payload.tenant, payload.contact_id, payload.list_id) == ("acme", 7, 3)
    rotated = PageTokens({"k1": OLD, "k2": NEW}, "k2")
    assert rotated.verify(token, "confirm", now=1001.0).contact_id == 7
    assert rotated.sign("confirm", "acme", 7, 3, now=1000.0) != token

    def refused(candidate: str, purpose: str = "confirm", now: float = 1001.0) -> str:
        with pytest.raises(PageTokenError) as e:
            rotated.verify(candidate, purpose, now)  # type: ignore[arg-type]
        return e.value.reason

    assert refused(token, "unsubscribe") == "wrong-purpose"
    assert refused(token, now=1000.0 + 14 * 86400) == "expired"
    tampered = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    assert refused(tampered) in ("bad-signature", "malformed")
    assert refused(PageTokens({"zz": NEW}, "zz").sign("confirm", "acme", 7, 3, 1000.0)) == (
        "unknown-key"
    )
    assert refused("not a token!") == "malformed"
    assert refused("") == "malformed"
    assert LIFETIMES == {
        "confirm": 14 * 86400,
        "preferences": 30 * 86400,
        "unsubscribe": 90 * 86400,
    }
    assert rotated.check_csrf(token, rotated.csrf(token))
    assert not rotated.check_csrf(token, rotated.csrf(tampered))
