"""Facts read from a message's header section, each distinct value parsed once.

Bulk mail repeats the same From on every message; parsing it with ``email.utils`` costs
~25 µs, so the result is remembered per distinct field value (bounded).
"""

from __future__ import annotations

import re
from email.utils import getaddresses

_FROM = re.compile(rb"^From:[ \t]*((?:[^\r\n]|\r\n[ \t])*)\r\n", re.I | re.M)
_FROM_DOMAINS: dict[bytes, str] = {}
_FROM_DOMAINS_SIZE = 4096


def from_domain(raw: bytes) -> str:
    """The domain of the first address in the From field, lower-cased ("" when none)."""
    head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    match = _FROM.search(head)
    if match is None:
        return ""
    field = match.group(1)
    domain = _FROM_DOMAINS.get(field)
    if domain is None:
        domain = _parse_from_domain(field)
        if len(_FROM_DOMAINS) >= _FROM_DOMAINS_SIZE:
            _FROM_DOMAINS.clear()
        _FROM_DOMAINS[field] = domain
    return domain


def _parse_from_domain(field: bytes) -> str:
    value = field.replace(b"\r\n", b"").decode("utf-8", "replace")
    addresses = [a for _, a in getaddresses([value]) if "@" in a]
    if not addresses:
        return ""
    return addresses[0].rpartition("@")[2].strip().lower().rstrip(".")
