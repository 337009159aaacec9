"""Signed tracking tokens: round trip, rotation, and a specific reason for every refusal."""

from __future__ import annotations

import base64
import re

import pytest

from gateway.tokens import TokenError, TokenPayload, TokenSigner, kind_code

K1 = "k1-secret-0123456789abcdef0123456789"
K2 = "k2-secret-0123456789abcdef0123456789"
NOW = 1_800_000_000


def payload(**overrides: object) -> TokenPayload:
    fields: dict[str, object] = {
        "kind": kind_code("click"),
        "message_id": "018f2a3b4c5d6e7f801234",
        "delivery_id": 42,
        "tenant": "acme",
        "issued_at": NOW,
        "url": "https://example.com/a?b=c",
    }
    fields.update(overrides)
    return TokenPayload(**fields)  # type: ignore[arg-type]


def reason(signer: TokenSigner, token: str, kind: str = "click", now: float = NOW) -> str:
    with pytest.raises(TokenError) as refused:
        signer.verify(token, kind=kind, now=now)  # type: ignore[arg-type]
    return refused.value.reason


def test_round_trip_is_url_safe_and_compact() -> None:
    signer = TokenSigner({"k1": K1}, "k1")
    token = signer.sign(payload())
    assert token.isascii() and set(token) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    assert len(token) < 130
    assert signer.verify(token, kind="click", now=NOW) == payload()


def test_rotation_new_key_signs_old_key_verifies_removed_key_does_not() -> None:
    old = TokenSigner({"k1": K1}, "k1").sign(payload())
    rotated = TokenSigner({"k2": K2, "k1": K1}, "k2")
    assert rotated.verify(old, kind="click", now=NOW) == payload()
    new = rotated.sign(payload())
    assert base64.urlsafe_b64decode(new + "==")[2:4] == b"k2"
    assert reason(TokenSigner({"k2": K2}, "k2"), old) == "unknown-key"


def test_every_refusal_has_its_reason() -> None:
    signer = TokenSigner({"k1": K1}, "k1")
    token = signer.sign(payload())
    assert reason(signer, "") == "malformed"
    assert reason(signer, "abc$def") == "malformed"
    assert reason(signer, token[:-1]) == "truncated"
    assert reason(signer, token[:-10]) == "truncated"
    assert reason(signer, token[:3]) == "truncated"
    assert reason(TokenSigner({"k1": K2}, "k1"), token) == "bad-signature"
    assert reason(signer, token, kind="open") == "wrong-kind"
    expiring = signer.sign(payload(expires_at=NOW + 60))
    assert signer.verify(expiring, kind="click", now=NOW + 59).url == payload().url
    assert reason(signer, expiring, now=NOW + 60) == "expired"
    data = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    data[0] = 9
    altered = base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode()
    assert reason(signer, altered) == "unsupported-version"


def test_no_altered_byte_is_ever_accepted() -> None:
    signer = TokenSigner({"k1": K1}, "k1")
    data = base64.urlsafe_b64decode(signer.sign(payload()) + "==")
    for i in range(len(data)):
        for flip in (0x01, 0x80):
            altered = bytearray(data)
            altered[i] ^= flip
            token = base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
            with pytest.raises(TokenError):
                signer.verify(token, kind="click", now=NOW)


def test_bad_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenSigner({"k1": "short"}, "k1")
    with pytest.raises(ValueError, match="not among the keys"):
        TokenSigner({"k1": K1}, "k2")
    with pytest.raises(ValueError, match="key id"):
        TokenSigner({"bad id!": K1}, "bad id!")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[tracking]\nkeys = { k1 = "short" }\n', "tracking.keys.k1: a secret needs at least 32"),
        (f'[tracking]\nkeys = {{ k1 = "{K1}" }}\nsigning_key = "k2"\n', "tracking.signing_key"),
        ('[tracking]\nbase_url = "t.example.com"\n', "tracking.base_url: give an absolute"),
        ('[tracking]\ntoken_lifetime = "soon"\n', "tracking.token_lifetime: not a duration"),
    ],
)
def test_tracking_config_errors_name_the_key(toml: str, expected: str) -> None:
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_config(toml, source="test.toml")


def test_a_tracking_plugin_without_keys_refuses_to_start(tmp_path) -> None:
    from gateway.config import ConfigError
    from gateway.server import Gateway
    from tests.conftest import make_config

    config = make_config(tmp_path, '[tracking]\nbase_url = "https://t.example"\n'
                         "[plugins.click_tracking]\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"tracking\.keys"):
        Gateway(config)
