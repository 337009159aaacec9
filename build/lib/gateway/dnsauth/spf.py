"""SPF evaluation (RFC 7208 ``check_host()``), async over ``Lookup``.

Includes and redirects are followed; every term that costs a DNS query (``include``, ``a``,
``mx``, ``ptr``, ``exists``, ``redirect``) counts toward the limit of 10 (4.6.4), and more than
2 "void" lookups (no answer) is a permerror too. Lookups that fail (timeout, SERVFAIL) give
``temperror``: the caller reports "could not check", not a verdict.

``evaluate(domain, ip)`` also records every domain it included, so a caller probing with an
address nothing matches walks the whole record and sees each include and the lookup count.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

import msgspec

from gateway.dnsauth.lookup import Answer, Lookup

Result = Literal["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"]

LOOKUP_LIMIT = 10
VOID_LIMIT = 2
MX_LIMIT = 10

_QUALIFIERS: dict[str, Result] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISM = re.compile(
    r"^(?P<q>[+\-~?]?)(?P<name>all|include|a|mx|ptr|ip4|ip6|exists)"
    r"(?::(?P<arg>[^/]+))?(?P<cidr>(?:/\d+)?(?://\d+)?)$",
    re.I,
)
_MODIFIER = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_.-]*)=(?P<value>.*)$")


class SpfError(Exception):
    def __init__(self, result: Result, reason: str) -> None:
        super().__init__(reason)
        self.result: Result = result
        self.reason = reason


class SpfResult(msgspec.Struct, kw_only=True):
    result: Result
    reason: str = ""
    record: str = ""
    """The top-level ``v=spf1`` record evaluated ("" when there is none)."""
    lookups: int = 0
    includes: list[str] = msgspec.field(default_factory=list)
    """Domains reached through ``include:`` and ``redirect=``, in evaluation order."""


def spf_records(answer: Answer) -> list[str]:
    """The ``v=spf1`` records among a TXT answer (4.5: other TXT records are ignored)."""
    return [v for v in answer.values if v.lower() == "v=spf1" or v.lower().startswith("v=spf1 ")]


class _Evaluation:
    def __init__(self, lookup: Lookup, ip: str, sender: str) -> None:
        self.lookup = lookup
        self.ip = ipaddress.ip_address(ip)
        self.sender = sender
        self.lookups = 0
        self.voids = 0
        self.includes: list[str] = []

    def count(self) -> None:
        self.lookups += 1
        if self.lookups > LOOKUP_LIMIT:
            raise SpfError("permerror", f"more than {LOOKUP_LIMIT} DNS lookups (RFC 7208 4.6.4)")

    async def query(self, name: str, rdtype: str) -> Answer:
        answer = await self.lookup.query(name, rdtype)
        if answer.status == "error":
            raise SpfError("temperror", answer.error)
        if answer.absent:
            self.voids += 1
            if self.voids > VOID_LIMIT:
                raise SpfError("permerror", f"more than {VOID_LIMIT} void lookups (4.6.4)")
        return answer

    async def record(self, domain: str) -> str | None:
        answer = await self.lookup.txt(domain)
        if answer.status == "error":
            raise SpfError("temperror", answer.error)
        records = spf_records(answer)
        if len(records) > 1:
            raise SpfError("permerror", f"{domain} has {len(records)} SPF records (4.5)")
        return records[0] if records else None

    async def check_host(self, domain: str, depth: int = 0) -> Result:
        record = await self.record(domain)
        if record is None:
            return "none"
        terms = record.split()[1:]
        redirect = None
        for term in terms:
            modifier = _MODIFIER.match(term)
            if modifier and not _MECHANISM.match(term):
                if modifier["name"].lower() == "redirect":
                    if redirect is not None:
                        raise SpfError("permerror", f"{domain}: two redirect= modifiers")
                    redirect = self.expand(modifier["value"], domain)
                continue
            match = _MECHANISM.match(term)
            if match is None:
                raise SpfError("permerror", f"{domain}: unknown term {term!r}")
            if await self.matches(match, domain, depth):
                return _QUALIFIERS[match["q"] or "+"]
        if redirect is not None:
            self.count()
            self.includes.append(redirect)
            result = await self.check_host(redirect, depth + 1)
            if result == "none":
                raise SpfError("permerror", f"redirect={redirect} has no SPF record")
            return result
        return "neutral"

    async def matches(self, match: re.Match[str], domain: str, depth: int) -> bool:
        name = match["name"].lower()
        arg = match["arg"]
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            if not arg:
                raise SpfError("permerror", f"{domain}: {name} needs an address")
            try:
                network = ipaddress.ip_network(arg + (match["cidr"] or ""), strict=False)
            except ValueError:
                raise SpfError("permerror", f"{domain}: bad {name}:{arg}") from None
            if (name == "ip4") != (network.version == 4):
                raise SpfError("permerror", f"{domain}: {name}:{arg} is the wrong family")
            return self.ip.version == network.version and self.ip in network
        target = self.expand(arg, domain) if arg else domain
        self.count()
        if name == "include":
            if not arg:
                raise SpfError("permerror", f"{domain}: include needs a domain")
            if depth > LOOKUP_LIMIT:
                raise SpfError("permerror", "include loop")
            self.includes.append(target)
            result = await self.check_host(target, depth + 1)
            if result == "none":
                raise SpfError("permerror", f"include:{target} has no SPF record (5.2)")
            if result in ("permerror", "temperror"):
                raise SpfError(result, f"include:{target}")
            return result == "pass"
        if name == "exists":
            return (await self.query(target, "A")).status == "ok"
        if name == "a":
            return await self.address_matches(target, match["cidr"])
        if name == "mx":
            answer = await self.query(target, "MX")
            hosts = [v.split()[-1] for v in answer.values][:MX_LIMIT]
            for host in hosts:
                if await self.address_matches(host, match["cidr"], count_void=False):
                    return True
            return False
        # ptr: discouraged (5.5) and slow; treated as "does not match", after counting it.
        return False

    async def address_matches(self, host: str, cidr: str | None, count_void: bool = True) -> bool:
        v4, _, v6 = (cidr or "").lstrip("/").partition("//")
        prefix = int(v4) if self.ip.version == 4 and v4 else None
        if self.ip.version == 6:
            prefix = int(v6) if v6 else None
        rdtype = "A" if self.ip.version == 4 else "AAAA"
        answer = await (self.query(host, rdtype) if count_void else self.lookup.query(host, rdtype))
        if answer.status == "error":
            raise SpfError("temperror", answer.error)
        for value in answer.values:
            bits = prefix if prefix is not None else self.ip.max_prefixlen
            if self.ip in ipaddress.ip_network(f"{value}/{bits}", strict=False):
                return True
        return False

    def expand(self, spec: str, domain: str) -> str:
        """Macro expansion (7.3) for the letters s l o d i h, with reversal and truncation."""
        local, _, sender_domain = self.sender.rpartition("@")

        def letter(m: re.Match[str]) -> str:
            char, digits, reverse, delimiters = (
                m.group(1).lower(),
                m.group(2),
                m.group(3),
                m.group(4),
            )
            values = {
                "s": self.sender,
                "l": local or "postmaster",
                "o": sender_domain,
                "d": domain,
                "h": domain,
                "i": (
                    str(self.ip)
                    if self.ip.version == 4
                    else ".".join(self.ip.exploded.replace(":", ""))
                ),
            }
            if char not in values:
                raise SpfError("permerror", f"unsupported macro %{{{m.group(1)}}}")
            parts = re.split("[" + re.escape(delimiters or ".") + "]", values[char])
            if reverse:
                parts.reverse()
            if digits:
                parts = parts[-int(digits) :]
            return ".".join(parts)

        text = re.sub(r"%\{([a-zA-Z])(\d*)(r?)([.\-+,/_=]*)\}", letter, spec)
        return text.replace("%%", "%").replace("%_", " ").replace("%-", "%20").rstrip(".")


async def evaluate(lookup: Lookup, domain: str, ip: str, sender: str = "") -> SpfResult:
    """``check_host(ip, domain, sender)``: the result and how it was reached."""
    evaluation = _Evaluation(lookup, ip, sender or f"postmaster@{domain}")
    record = ""
    try:
        top = await evaluation.record(domain)
        record = top or ""
        result = await evaluation.check_host(domain)
        reason = "no SPF record" if result == "none" else ""
    except SpfError as e:
        result, reason = e.result, e.reason
    return SpfResult(
        result=result,
        reason=reason,
        record=record,
        lookups=evaluation.lookups,
        includes=evaluation.includes,
    )
