"""RFC 5321 envelope paths, parsed strictly (with RFC 6531 UTF-8), so a malformed address is
refused at its command instead of being accepted and bounced later.

``Path = "<" [ A-d-l ":" ] Mailbox ">"``; the local part is a dot-string or a quoted string,
the domain a host name (U-labels checked with IDNA 2008 / UTS 46) or an address literal that
is a real IPv4 or IPv6 address. A source route is accepted and dropped (RFC 5321 4.1.1.3).
"""

from __future__ import annotations

import functools
import ipaddress
import re

import idna

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LABEL = (
    r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
)
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[^\[\]\\\s]+\]"
_ROUTE = rf"@{_DOMAIN}(?:,@{_DOMAIN})*:"
_PATH = re.compile(
    rf"<(?:{_ROUTE})?(?P<mailbox>(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL}))>"
    r"(?:[ ]+(?P<params>.*))?",
    re.DOTALL,
)
_NULL = re.compile(r"<>(?:[ ]+(?P<params>.*))?", re.DOTALL)


@functools.lru_cache(maxsize=4096)
def parse_path(arg: str) -> tuple[str | None, str | None]:
    """``(mailbox, parameters)`` from the argument of ``MAIL FROM:``/``RCPT TO:`` (keyword
    stripped); ``("<>", params)`` for the null path; ``(None, None)`` when it is not a valid
    RFC 5321 path (aiosmtpd then answers ``553 5.1.3``). Same contract as aiosmtpd's
    ``SMTP._getaddr``."""
    arg = arg.strip(" ")
    null = _NULL.fullmatch(arg)
    if null is not None:
        return "<>", null.group("params") or ""
    match = _PATH.fullmatch(arg)
    if match is None:
        return None, None
    mailbox, local, domain = match.group("mailbox", "local", "domain")
    if len(mailbox) + 2 > MAX_PATH or len(local.encode()) > MAX_LOCAL_PART:
        return None, None
    if not (_literal_ok(domain) if domain.startswith("[") else _domain_ok(domain)):
        return None, None
    return mailbox, match.group("params") or ""


def _domain_ok(domain: str) -> bool:
    if domain.isascii() and "xn--" not in domain.lower():
        return len(domain) <= MAX_DOMAIN and all(len(label) <= 63 for label in domain.split("."))
    try:
        encoded = idna.encode(domain, uts46=True)
    except (idna.IDNAError, UnicodeError):
        return False
    return len(encoded) <= MAX_DOMAIN


def _literal_ok(literal: str) -> bool:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``; general literals (``[tag:...]``) cannot be
    routed, so they are refused too."""
    inner = literal[1:-1]
    try:
        if inner[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True
