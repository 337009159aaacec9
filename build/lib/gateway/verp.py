"""VERP return paths: one signed envelope sender per delivery, so a bounce names the delivery
it is about — and only the gateway can make one that is accepted.

A return path looks like ``bounces+<message id>.<delivery id>.<key id>.<mac>@<bounce domain>``
where ``mac`` is the first 80 bits of HMAC-SHA256(key, ``<message id>.<delivery id>``) in
lower-case base32. Everything in it survives MTAs that fold the local part to lower case
(message ids are lower-case hex; key ids are matched without regard to case). Several keys
verify, one signs: keys rotate without refusing the bounces of mail already sent.

It replaces the envelope sender only on routes that deliver over SMTP (``smtp`` and ``mx``
providers) and only when ``[bounces] domain`` is set: ESP APIs have their own bounce handling
and report through webhooks, and a null sender (DSNs) stays null.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import msgspec

from gateway.config import BouncesSection, Config

SMTP_ROUTE_TYPES = frozenset({"smtp", "mx"})
MAC_BYTES = 10


class VerpError(ValueError):
    """The address is not a return path this gateway signed; ``reason`` says why."""


class ReturnPath(msgspec.Struct, frozen=True):
    message_id: str
    delivery_id: int


class VerpSigner:
    def __init__(self, section: BouncesSection) -> None:
        if not section.domain or not section.keys:
            raise ValueError("VERP needs bounces.domain and at least one key")
        self.domain = section.domain.lower()
        self.local_part = section.local_part.lower()
        self._keys = {key_id.lower(): secret.encode() for key_id, secret in section.keys.items()}
        self._signing = (section.signing_key or next(iter(section.keys))).lower()

    @classmethod
    def from_config(cls, config: Config) -> VerpSigner | None:
        """The signer when ``[bounces] domain`` is set, else ``None`` (VERP off)."""
        return cls(config.bounces) if config.bounces.domain else None

    def _mac(self, key_id: str, message_id: str, delivery_id: int) -> str:
        digest = hmac.new(
            self._keys[key_id], f"{message_id}.{delivery_id}".encode(), hashlib.sha256
        ).digest()
        return base64.b32encode(digest[:MAC_BYTES]).decode().lower()

    def address(self, message_id: str, delivery_id: int) -> str:
        mac = self._mac(self._signing, message_id, delivery_id)
        token = f"{message_id}.{delivery_id}.{self._signing}.{mac}"
        return f"{self.local_part}+{token}@{self.domain}"

    def is_ours(self, address: str) -> bool:
        """Whether ``address`` is at the bounce domain (signed or not)."""
        return address.rpartition("@")[2].lower() == self.domain

    def parse(self, address: str) -> ReturnPath:
        """The delivery a return path names; :class:`VerpError` unless we signed it."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or domain.lower() != self.domain:
            raise VerpError(f"not at the bounce domain {self.domain}")
        prefix, plus, token = local.lower().partition("+")
        if not plus or prefix != self.local_part:
            raise VerpError(f"not a {self.local_part}+… return path")
        parts = token.split(".")
        if len(parts) != 4 or not parts[1].isdigit():
            raise VerpError("malformed return path token")
        message_id, delivery, key_id, mac = parts
        if key_id not in self._keys:
            raise VerpError(f"unknown key id {key_id!r}")
        if not hmac.compare_digest(mac, self._mac(key_id, message_id, int(delivery))):
            raise VerpError("the return path signature does not match (forged?)")
        return ReturnPath(message_id, int(delivery))


def verp_routes(config: Config) -> frozenset[str]:
    """Provider names whose sends get a VERP return path (SMTP and direct MX)."""
    return frozenset(
        name
        for name, section in config.providers.items()
        if type(section).__struct_config__.tag in SMTP_ROUTE_TYPES
    )
