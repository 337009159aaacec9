"""Password hashes for SMTP credentials: scrypt (stdlib), self-describing, constant-time checks.

Format: ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``. Verification costs tens of
milliseconds of CPU on purpose, so callers run it in a thread and cache successes
(see ``CredentialCache``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

_FORMAT = re.compile(
    r"^scrypt\$(\d{1,2})\$(\d{1,2})\$(\d{1,2})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$"
)


def hash_password(password: str, *, log2_n: int = 14, r: int = 8, p: int = 1) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**log2_n, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${log2_n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def is_password_hash(value: str) -> bool:
    return _FORMAT.match(value) is not None


def verify_password(password: bytes, encoded: str) -> bool:
    m = _FORMAT.match(encoded)
    if m is None:
        return False
    log2_n, r, p = (int(g) for g in m.group(1, 2, 3))
    salt, expected = base64.b64decode(m.group(4)), base64.b64decode(m.group(5))
    digest = hashlib.scrypt(
        password, salt=salt, n=2**log2_n, r=r, p=p, dklen=len(expected), maxmem=2**26
    )
    return hmac.compare_digest(digest, expected)


class CredentialCache:
    """Remembers recent successful logins by a keyed digest, so reconnecting apps skip scrypt.

    Only successes are cached and only as HMAC(process key, user, password), so a memory dump
    yields no password and a wrong password always pays the full scrypt cost.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._key = os.urandom(32)
        self._ok: dict[bytes, str] = {}
        self._max = max_entries

    def _digest(self, username: bytes, password: bytes) -> bytes:
        return hmac.new(self._key, username + b"\0" + password, hashlib.sha256).digest()

    def get(self, username: bytes, password: bytes) -> str | None:
        return self._ok.get(self._digest(username, password))

    def put(self, username: bytes, password: bytes, tenant: str) -> None:
        if len(self._ok) >= self._max:
            self._ok.pop(next(iter(self._ok)))
        self._ok[self._digest(username, password)] = tenant
