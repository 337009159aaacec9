"""API keys: how they are made, stored (hashed) and recognised, and what they may do.

A key is ``gwk_`` followed by 32 random bytes (URL-safe base64). Only its SHA-256 goes into the
config (``sha256:<hex>``): a fast hash is enough because the key is 256 bits of randomness, so
there is nothing to brute-force (passwords, which people choose, get scrypt instead). Lookup is
by hash, so a key costs one SHA-256 and one dict lookup per request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from typing import Literal

import msgspec

Scope = Literal["send", "read", "admin", "operator"]
SCOPES: tuple[Scope, ...] = ("send", "read", "admin", "operator")
KEY_PREFIX = "gwk_"
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


def generate_api_key() -> str:
    """A new random API key (shown once; only its hash is kept)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The value for ``key_hash`` in the config."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def is_api_key_hash(value: str) -> bool:
    return _HASH.match(value) is not None


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated caller: which tenant, which key, what it may do."""

    tenant: str
    name: str
    scopes: frozenset[str]
    rate_limit: float
    """Requests per second; 0 means unlimited."""
    rate_burst: int

    def allows(self, scope: Scope) -> bool:
        """``admin`` may do everything within its tenant; other scopes only what they name.
        ``operator`` (sending domains and IPs of every tenant) is never implied."""
        return scope in self.scopes or ("admin" in self.scopes and scope != "operator")

    @property
    def id(self) -> str:
        return f"{self.tenant}/{self.name}"


class KeyRing:
    """Every configured API key, by hash."""

    def __init__(self, keys: Mapping[str, ApiKey]) -> None:
        self._by_hash = dict(keys)
        self._recent: dict[str, ApiKey] = {}
        """Keys presented lately (valid ones only), to skip hashing them on every request."""

    def find(self, presented: str) -> ApiKey | None:
        """The key's owner, or ``None``; the comparison is on hashes, so timing reveals nothing
        about the stored secret."""
        known = self._recent.get(presented)
        if known is not None:
            return known
        if not presented.startswith(KEY_PREFIX) or len(presented) > 200:
            return None
        found = self._by_hash.get(hash_api_key(presented))
        if found is not None:
            if len(self._recent) >= 1024:
                self._recent.clear()
            self._recent[presented] = found
        return found

    def __len__(self) -> int:
        return len(self._by_hash)
