"""SPF evaluation (RFC 7208 ``check_host()``) by pyspf, over our async resolver.

pyspf passes the RFC 7208 test suite (``tests/dns/rfc7208-tests.yml`` runs every case), so the
gateway does not keep an SPF evaluator of its own. pyspf is synchronous: an evaluation runs in
a worker thread (``asyncio.to_thread``), and pyspf's one DNS entry point, the module-level
``spf.DNSLookup``, is replaced once by ``_dispatch``. That serves the calling thread's bridge:
each query goes back to the event loop (``asyncio.run_coroutine_threadsafe``) and is answered
by the evaluation's resolver, so the ``[dns]`` servers and timeout apply and nothing blocks the
loop. A thread without a bridge gets a temperror, never the system resolver.

``evaluate(domain, ip)`` also records every domain reached through ``include:`` and
``redirect=``, so a caller probing with an address nothing matches walks the whole record and
sees each include and the lookup count (pyspf's ``query.lookups``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import warnings
from collections.abc import Callable
from typing import Any, Literal, Protocol

import msgspec

from gateway.dnsauth.lookup import Answer

with warnings.catch_warnings():
    # pyspf's docstrings hold invalid escape sequences: compiling it (no cached .pyc) warns.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", SyntaxWarning)
    import spf as pyspf

Result = Literal["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"]

LOOKUP_LIMIT = pyspf.MAX_LOOKUP
"""RFC 7208 4.6.4: terms that query DNS, at most 10 per evaluation."""

QUERY_TIMEOUT = 30.0
"""The most one bridged query may wait for the loop; the resolver's own lifetime (``[dns]
timeout``) normally ends it long before."""


class Resolver(Protocol):
    """What an evaluation queries: ``gateway.dnsauth.lookup.Lookup`` (or a test's zone data)."""

    async def query(self, name: str, rdtype: str) -> Answer: ...


class SpfResult(msgspec.Struct, kw_only=True):
    result: Result
    reason: str = ""
    record: str = ""
    """The top-level ``v=spf1`` record evaluated ("" when there is none)."""
    lookups: int = 0
    includes: list[str] = msgspec.field(default_factory=list)
    """Domains reached through ``include:`` and ``redirect=``, in evaluation order."""
    explanation: str = ""
    """For a fail: the domain's ``exp=`` text (RFC 7208 6.2), else the default given."""


def spf_records(answer: Answer) -> list[str]:
    """The ``v=spf1`` records among a TXT answer (4.5: other TXT records are ignored)."""
    return [v for v in answer.values if v.lower() == "v=spf1" or v.lower().startswith("v=spf1 ")]


Bridge = Callable[[str, str, float], list[tuple[tuple[str, str], Any]]]
_local = threading.local()


def _dispatch(
    name: str, qtype: str, strict: Any = True, timeout: float | None = None
) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's ``DNSLookup(name, qtype, strict, timeout)``: ``((name, type), value)`` tuples."""
    bridge: Bridge | None = getattr(_local, "bridge", None)
    if bridge is None:
        raise pyspf.TempError(f"no resolver for {qtype} {name} in this thread")
    return bridge(name, qtype, min(timeout or QUERY_TIMEOUT, QUERY_TIMEOUT))


pyspf.DNSLookup = _dispatch


def _bridge(resolver: Resolver, loop: asyncio.AbstractEventLoop) -> Bridge:
    def lookup(name: str, qtype: str, timeout: float) -> list[tuple[tuple[str, str], Any]]:
        future = asyncio.run_coroutine_threadsafe(resolver.query(name, qtype), loop)
        try:
            answer = future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise pyspf.TempError(f"timed out looking up {qtype} {name}") from None
        if answer.status == "error":
            raise pyspf.TempError(answer.error)
        return [((name, qtype), _value(qtype, v)) for v in answer.values]

    return lookup


def _value(qtype: str, text: str) -> Any:
    """An ``Answer`` value in the form pyspf's own dnspython driver gives it."""
    if qtype in ("TXT", "SPF"):
        return (text.encode("utf-8"),)
    if qtype == "MX":
        preference, _, host = text.partition(" ")
        return (int(preference), host)
    return text


class _Query(pyspf.query):  # type: ignore[misc]
    """pyspf's query, recording the SPF records it fetches and following RFC 7208 5.5 on
    DNS errors while validating PTR names."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetched: list[str] = []

    def dns_spf(self, domain: str) -> str | None:
        self.fetched.append(domain)
        return pyspf.query.dns_spf(self, domain)  # type: ignore[no-any-return]

    def validated_ptrs(self) -> list[str]:
        # 5.5: a DNS error on the PTR lookup is "no match"; on a name's address lookup, that
        # name is skipped and the search goes on (pyspf would end the evaluation instead).
        try:
            names = self.dns_ptr(self.i)
        except pyspf.TempError:
            return []
        validated = []
        for name in names[: pyspf.MAX_PTR]:
            try:
                addresses = self.dns_a(name, self.A)
            except pyspf.TempError:
                continue
            if self.cidrmatch(addresses, self.cidrmax):
                validated.append(name)
        return validated


_PREFIXES = ("SPF Permanent Error: ", "SPF Temporary Error: ")


def check_host(
    bridge: Bridge, ip: str, sender: str, helo: str, domain: str = "", explanation: str = ""
) -> SpfResult:
    """pyspf's evaluation in the calling thread, its DNS through ``bridge``: the policy of
    ``domain`` (default: the sender's domain, or HELO's for an empty sender); ``explanation``
    is the text of a fail whose domain gives no ``exp=``."""
    _local.bridge = bridge
    try:
        query = _Query(i=ip, s=sender, h=helo, strict=True)
        if domain:
            query.d = domain.rstrip(".")
        query.set_default_explanation(explanation)
        result, _code, text = query.check()
    except pyspf.PermError as e:  # a malformed client IP, before any evaluation
        return SpfResult(result="permerror", reason=str(e))
    finally:
        del _local.bridge
    reason = text if result in ("permerror", "temperror") else ""
    for prefix in _PREFIXES:
        reason = reason.removeprefix(prefix)
    return SpfResult(
        result=result,
        reason=reason or ("no SPF record" if result == "none" else ""),
        record=_top_record(query, query.fetched[0]) if query.fetched else "",
        lookups=query.lookups,
        includes=query.fetched[1:],
        explanation=text if result == "fail" else "",
    )


def _top_record(query: _Query, domain: str) -> str:
    records = [
        b"".join(parts).decode("utf-8", "replace")
        for parts in query.cache.get((domain.lower(), "TXT"), [])
    ]
    spf1 = [r for r in records if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]
    return spf1[0] if len(spf1) == 1 else ""


async def evaluate(
    resolver: Resolver,
    domain: str,
    ip: str,
    sender: str = "",
    helo: str = "",
    explanation: str = "",
) -> SpfResult:
    """``check_host(ip, domain, sender)``: the result and how it was reached. With ``domain``
    "" the sender's domain is evaluated (HELO's for an empty sender), as a receiver does;
    ``explanation`` is the text of a fail whose domain gives no ``exp=``."""
    if domain:
        sender = sender or f"postmaster@{domain}"
        helo = helo or domain
    bridge = _bridge(resolver, asyncio.get_running_loop())
    return await asyncio.to_thread(check_host, bridge, ip, sender, helo, domain, explanation)
