"""Who may send as whom: a tenant's envelope sender and every author of its messages must be
in one of its ``sending_domains`` (Postfix's ``reject_sender_login_mismatch``).

Checked on SMTP (``MAIL FROM`` at the command, the header at DATA) and on the HTTP API alike.
The header ``From:`` is parsed per RFC 5322 (groups, encoded words, comments), never with a
regex; a message with two ``From:``, ``Sender:`` or ``Date:`` headers is refused outright, as
a second ``From:`` is the usual way to show a reader one author and DMARC another.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from email.errors import HeaderParseError, NonASCIILocalPartDefect
from email.headerregistry import HeaderRegistry

from gateway.config import TenantSection
from gateway.message import Reject

NOT_OWNED = Reject(553, "5.7.1", "Sender address rejected: not owned by user")
NULL_SENDER_REFUSED = Reject(553, "5.7.1", "Sender address rejected: <> not allowed for this user")
_SINGLE_HEADERS = (b"from", b"sender", b"date")
_REGISTRY = HeaderRegistry()
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
"""An unqualified local part (a dot-atom without ``@``)."""


def _refused(text: str) -> Reject:
    return Reject(550, "5.6.0", f"Message refused: {text}")


def _author_not_owned(address: str) -> Reject:
    return Reject(550, "5.7.1", f"Sender address rejected: {address} not owned by user")


class SenderPolicy:
    """The sending domains of every tenant, and who claimed which."""

    def __init__(self, tenants: Mapping[str, TenantSection]) -> None:
        self._own = {
            name: tuple(_normal(d) for d in tenant.sending_domains)
            for name, tenant in tenants.items()
        }
        self._claimed = {d: name for name, domains in self._own.items() for d in domains}
        self._null_ok = frozenset(name for name, t in tenants.items() if t.allow_null_sender)

    def domain_allowed(self, tenant: str, domain: str) -> bool:
        """``domain`` (or a parent) is the tenant's; a tenant listing no domains may use any
        domain that no other tenant lists."""
        domain = _normal(domain)
        own = self._own.get(tenant, ())
        if own:
            return any(domain == d or domain.endswith("." + d) for d in own)
        labels = domain.split(".")
        for i in range(len(labels)):
            owner = self._claimed.get(".".join(labels[i:]))
            if owner is not None:
                return owner == tenant
        return True

    def envelope_sender(self, tenant: str, mail_from: str) -> Reject | None:
        """``None`` if the tenant may use ``mail_from`` (``""``/``"<>"``: the null path)."""
        if mail_from in ("", "<>"):
            return None if tenant in self._null_ok else NULL_SENDER_REFUSED
        if self.domain_allowed(tenant, mail_from.rpartition("@")[2]):
            return None
        return NOT_OWNED

    def message(self, tenant: str, mail_from: str, raw: bytes) -> Reject | None:
        """The envelope sender, then the header: one ``From:``/``Sender:``/``Date:`` each,
        and every author (``From:`` and ``Sender:`` addresses) the tenant's."""
        verdict = self.envelope_sender(tenant, mail_from)
        if verdict is not None:
            return verdict
        headers = single_headers(raw)
        if isinstance(headers, Reject):
            return headers
        for name in ("from", "sender"):
            value = headers.get(name)
            if value is None:
                continue
            addresses = authors(value)
            if addresses is None:
                return _refused(f"{name.title()} header is not a valid RFC 5322 address list")
            for address in addresses:
                if not self.domain_allowed(tenant, address.rpartition("@")[2]):
                    return _author_not_owned(address)
        return None


def single_headers(raw: bytes) -> dict[str, str] | Reject:
    """The unfolded values of ``From``, ``Sender`` and ``Date`` in the header section, or a
    ``550 5.6.0`` when one of them appears twice."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    found: dict[str, str] = {}
    current: bytes | None = None
    parts: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                parts.append(line)
            continue
        if current is not None:
            found[current.decode()] = _unfold(parts)
            current = None
        name, colon, value = line.partition(b":")
        key = name.strip().lower()
        if colon and key in _SINGLE_HEADERS:
            if key.decode() in found:
                return _refused(f"more than one {key.decode().title()} header")
            current, parts = key, [value]
    if current is not None:
        found[current.decode()] = _unfold(parts)
    return found


def _unfold(parts: list[bytes]) -> str:
    return b"".join(parts).decode("utf-8", "surrogateescape").strip()


@functools.lru_cache(maxsize=1024)
def authors(value: str) -> tuple[str, ...] | None:
    """Every mailbox in an address-list header value (group members included), or ``None``
    when it does not parse cleanly or names no mailbox with a domain."""
    try:
        header = _REGISTRY("from", value)
    except (HeaderParseError, IndexError, ValueError):
        return None
    addresses = header.addresses  # type: ignore[attr-defined]
    # RFC 6532 allows UTF-8 local parts; the email package flags them as a defect.
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]
    if len(addresses) == 1 and not addresses[0].domain and _LOCAL.fullmatch(addresses[0].username):
        # ``From: root (Cron Daemon)``: an unqualified local sender (cron, sendmail -t) names
        # no domain at all, so it can impersonate none; it is the gateway's own.
        return ()
    if defects or not addresses:
        return None
    found = tuple(f"{a.username}@{a.domain}" for a in addresses)
    if any(not a.username or not a.domain for a in addresses):
        return None
    return found


def _normal(domain: str) -> str:
    return domain.strip().lower().rstrip(".")
