"""Links in audience mail and pages: HMAC-signed, purpose-bound tokens with a key id and a
lifetime per purpose (confirm 14 days, preferences 30 days, unsubscribe 90 days).

A token is ``base64url(version | len(key id) | key id | payload | mac)``: the payload is a
msgpack array (purpose, tenant, contact id, list id, issued, expires) and the mac the first
16 bytes of HMAC-SHA256 over everything before it. Every key in ``[plugins.audience] keys``
verifies; ``signing_key`` signs new links, so keys rotate without breaking links already sent.
A token made for one purpose is refused for any other, so a confirm link cannot unsubscribe.
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

Purpose = Literal["confirm", "preferences", "unsubscribe"]
LIFETIMES: dict[str, float] = {
    "confirm": 14 * 86400.0,
    "preferences": 30 * 86400.0,
    "unsubscribe": 90 * 86400.0,
}
VERSION = 1
MAC_SIZE = 16
MIN_SECRET_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
Refusal = Literal["malformed", "unknown-key", "bad-signature", "wrong-purpose", "expired"]


class PageTokenError(Exception):
    def __init__(self, reason: Refusal, payload: PagePayload | None = None) -> None:
        super().__init__(reason)
        self.reason: Refusal = reason
        self.payload = payload
        """For ``expired`` only: what the genuine token said (to offer a fresh link)."""


class PagePayload(msgspec.Struct, array_like=True, frozen=True):
    purpose: str
    tenant: str
    contact_id: int
    list_id: int
    issued_at: int
    expires_at: int


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(PagePayload)


class PageTokens:
    def __init__(self, keys: Mapping[str, str], signing_key: str) -> None:
        if signing_key not in keys:
            raise ValueError(f"signing key {signing_key!r} is not among the keys")
        self._keys: dict[bytes, bytes] = {}
        for key_id, secret in keys.items():
            if not _KEY_ID.match(key_id):
                raise ValueError(f"key id {key_id!r}: use 1-16 letters, digits, '-' or '_'")
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(f"key {key_id!r}: at least {MIN_SECRET_BYTES} bytes")
            self._keys[key_id.encode()] = secret.encode()
        self._kid = signing_key.encode()

    def _mac(self, kid: bytes, body: bytes) -> bytes:
        return hmac.new(self._keys[kid], body, hashlib.sha256).digest()[:MAC_SIZE]

    def sign(self, purpose: Purpose, tenant: str, contact_id: int, list_id: int, now: float) -> str:
        payload = PagePayload(
            purpose, tenant, contact_id, list_id, int(now), int(now + LIFETIMES[purpose])
        )
        body = bytes((VERSION, len(self._kid))) + self._kid + _ENCODER.encode(payload)
        token = body + self._mac(self._kid, body)
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")

    def verify(self, token: str, purpose: Purpose, now: float) -> PagePayload:
        """The payload of a genuine token for ``purpose`` that has not expired; else
        :class:`PageTokenError` (``expired`` carries the payload, so a fresh link can be
        offered)."""
        if not token or len(token) > 1024 or not _B64URL.match(token):
            raise PageTokenError("malformed")
        try:
            data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise PageTokenError("malformed") from None
        if len(data) < 2 + MAC_SIZE or data[0] != VERSION:
            raise PageTokenError("malformed")
        kid_end = 2 + data[1]
        kid = data[2:kid_end]
        if kid not in self._keys:
            raise PageTokenError("unknown-key")
        body, tag = data[:-MAC_SIZE], data[-MAC_SIZE:]
        if not hmac.compare_digest(self._mac(kid, body), tag):
            raise PageTokenError("bad-signature")
        try:
            payload = _DECODER.decode(body[kid_end:])
        except msgspec.DecodeError:
            raise PageTokenError("malformed") from None
        if payload.purpose != purpose:
            raise PageTokenError("wrong-purpose")
        if now >= payload.expires_at:
            raise PageTokenError("expired", payload)
        return payload

    def csrf(self, token: str) -> str:
        """The form token that goes with a page's link token (a POST must carry both)."""
        mac = hmac.new(self._keys[self._kid], b"csrf:" + token.encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def check_csrf(self, token: str, presented: str) -> bool:
        return hmac.compare_digest(self.csrf(token), presented or "")
