"""Consent evidence as it is kept: IP addresses and user agents only as HMAC-SHA256 under a
per-tenant salt (so the same visitor is recognisable within a tenant, never across tenants,
and the raw value is never stored); the consent statement only as its SHA-256."""

from __future__ import annotations

import hashlib
import hmac


def hash_identifier(salt: bytes, value: str) -> str:
    """Hex HMAC of ``value`` under the tenant's ``salt``; empty stays empty."""
    if not value:
        return ""
    return hmac.new(salt, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def hash_statement(statement: str) -> str:
    return hashlib.sha256(statement.encode()).hexdigest() if statement else ""
