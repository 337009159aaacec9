"""Contact addresses: checked once, kept as given and in the folded form every lookup uses."""

from __future__ import annotations

import re

_LOCAL = re.compile(r"^[^\s@\"(),:;<>\[\\\]\x00-\x1f\x7f]{1,64}$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class AddressError(ValueError):
    """Not an email address; ``code`` is the per-row import code (``invalid_email``)."""

    code = "invalid_email"


def normalize_email(address: str) -> str:
    """The folded form contacts are keyed by: trimmed, domain in IDNA (punycode), the whole
    address lower-cased, as the suppression list folds it (``gateway.store.base``).

    Raises :class:`AddressError` when ``address`` is not ``local@domain``.
    """
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if not at or not _LOCAL.match(local) or local[0] == "." or local[-1] == "." or ".." in local:
        raise AddressError(f"{address!r} is not an email address (local@domain)")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise AddressError(f"{domain!r} is not a valid domain") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or len(ascii_domain) > 253 or not all(_LABEL.match(x) for x in labels):
        raise AddressError(f"{domain!r} is not a valid domain")
    folded = f"{local}@{ascii_domain}".lower()
    if len(folded) > 254:
        raise AddressError("an address may be at most 254 characters")
    return folded
