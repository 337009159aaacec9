"""Signed, opaque URL tokens for open, click and unsubscribe links.

A token is ``base64url(version | len(key id) | key id | payload | mac)`` without padding:

* ``version`` — one byte, ``1``; a later format gets a new number.
* ``key id`` — which ``[tracking.keys]`` secret made the MAC. New tokens are signed with
  ``tracking.signing_key``; every other listed key still verifies, so a key can be rotated
  without breaking links already sent, and retired by removing it from the list.
* ``payload`` — a msgpack array (:class:`TokenPayload`): kind, message id, delivery id,
  tenant, issue time, optional expiry, and — by kind — the recipient (unsubscribe) or the
  target URL (click).
* ``mac`` — the first 16 bytes (128 bits) of HMAC-SHA256 over everything before it.

Click tokens carry the URL itself rather than an index into a stored list: nothing is written
per message on the hot path, and a link keeps working after the message is purged from the
spool. Because only URLs the gateway signed can come out of a token, the click endpoint is
never an open redirect. Tokens are *opaque*, not secret: base64 is not encryption, so
payloads hold ids rather than addresses, except the unsubscribe token, which must keep working
(for months) after the message is gone.

Every refusal says why (:class:`TokenError.reason`), for logs and tests; the HTTP endpoints
answer it without echoing anything from the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Literal

import msgspec

VERSION = 1
MAC_SIZE = 16
MIN_SECRET_BYTES = 32
KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")

Kind = Literal["click", "open", "unsubscribe"]
_KIND_CODES: dict[str, int] = {"click": 1, "open": 2, "unsubscribe": 3}
_KINDS: dict[int, Kind] = {1: "click", 2: "open", 3: "unsubscribe"}

Reason = Literal[
    "malformed",
    "truncated",
    "unsupported-version",
    "unknown-key",
    "bad-signature",
    "expired",
    "wrong-kind",
]


class TokenError(Exception):
    """The token was refused; ``reason`` says why."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


class TokenPayload(msgspec.Struct, array_like=True, omit_defaults=True, frozen=True):
    """What a token says. Field order is the wire format: append new fields at the end."""

    kind: int
    message_id: str
    delivery_id: int
    tenant: str
    issued_at: int
    """Epoch seconds when the link was made (≈ when the message was sent)."""
    expires_at: int = 0
    """Epoch seconds after which the token is refused; 0 means never."""
    recipient: str = ""
    url: str = ""
    list_id: str = ""
    stream: str = ""
    """The message's stream ("" for tokens made before streams: ``transactional``)."""
    trap: bool = False
    """A click token of the hidden link no reader can see (click classification)."""

    @property
    def kind_name(self) -> Kind:
        return _KINDS[self.kind]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(TokenPayload)


class TokenSigner:
    """Signs with one key and verifies with all of them; load it once (keys are parsed here)."""

    def __init__(self, keys: Mapping[str, str | bytes], signing_key: str) -> None:
        if signing_key not in keys:
            raise ValueError(f"signing key {signing_key!r} is not among the keys")
        self._macs: dict[bytes, hmac.HMAC] = {}
        for key_id, secret in keys.items():
            if not KEY_ID.match(key_id):
                raise ValueError(f"key id {key_id!r}: use 1-16 letters, digits, '-' or '_'")
            raw = secret.encode() if isinstance(secret, str) else secret
            if len(raw) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"key {key_id!r}: a secret needs at least {MIN_SECRET_BYTES} bytes"
                )
            # A keyed HMAC is copied per token: the key schedule is computed once.
            self._macs[key_id.encode()] = hmac.new(raw, digestmod=hashlib.sha256)
        kid = signing_key.encode()
        self._signing_mac = self._macs[kid]
        self._prefix = bytes((VERSION, len(kid))) + kid

    def sign(self, payload: TokenPayload) -> str:
        body = self._prefix + _ENCODER.encode(payload)
        mac = self._signing_mac.copy()
        mac.update(body)
        token = body + mac.digest()[:MAC_SIZE]
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")

    def verify(self, token: str, *, kind: Kind, now: float) -> TokenPayload:
        """The payload of a genuine, unexpired token of ``kind``; else :class:`TokenError`."""
        if not token or len(token) > 8192 or not _B64URL.match(token):
            raise TokenError("malformed")
        if len(token) % 4 == 1:  # no base64 text has this length: characters were cut off
            raise TokenError("truncated")
        try:
            data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise TokenError("malformed") from None
        if len(data) < 2:
            raise TokenError("truncated")
        if data[0] != VERSION:
            raise TokenError("unsupported-version")
        kid_end = 2 + data[1]
        if len(data) < kid_end + 1 + MAC_SIZE:
            raise TokenError("truncated")
        base = self._macs.get(data[2:kid_end])
        if base is None:
            raise TokenError("unknown-key")
        body, tag = data[:-MAC_SIZE], data[-MAC_SIZE:]
        try:
            # msgpack is safe on untrusted input; decoding first tells a link cut short (the
            # usual accident: a mail client wrapping it) from one that was altered.
            payload: TokenPayload | None = _DECODER.decode(body[kid_end:])
        except msgspec.DecodeError as e:
            if "truncated" in str(e):
                raise TokenError("truncated") from None
            payload = None
        except (msgspec.ValidationError, ValueError):  # ValueError: bad UTF-8 in a string
            payload = None
        mac = base.copy()
        mac.update(body)
        if not hmac.compare_digest(mac.digest()[:MAC_SIZE], tag):
            raise TokenError("bad-signature")
        if payload is None:  # signed by us yet undecodable: a format we no longer read
            raise TokenError("malformed")
        if payload.kind not in _KINDS or payload.kind_name != kind:
            raise TokenError("wrong-kind")
        if payload.expires_at and now >= payload.expires_at:
            raise TokenError("expired")
        return payload


_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


def kind_code(kind: Kind) -> int:
    return _KIND_CODES[kind]
