"""Async DNS lookups whose answers tell "absent" apart from "could not check".

A timeout, SERVFAIL or a refused query is never reported as a missing record: that would send
an operator to fix a record that is fine. ``Answer.status`` says which case it is.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
import msgspec

Status = Literal["ok", "nxdomain", "nodata", "error"]


class Answer(msgspec.Struct, frozen=True):
    status: Status
    values: tuple[str, ...] = ()
    """TXT strings joined per record; other types in presentation format (names without the
    trailing dot)."""
    error: str = ""
    """Why the lookup could not be done (``status == "error"``)."""

    @property
    def absent(self) -> bool:
        return self.status in ("nxdomain", "nodata")


_HOST_PORT = re.compile(
    r"^\[(?P<v6>[^\]]+)\](?::(?P<port6>\d+))?$|^(?P<v4>[^:]+)(?::(?P<port>\d+))?$"
)


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"192.0.2.1"``, ``"192.0.2.1:5353"``, ``"::1"``, ``"[::1]:5353"`` → (address, port)."""
    try:
        return str(ipaddress.ip_address(text)), 53
    except ValueError:
        pass
    match = _HOST_PORT.match(text.strip())
    if match is None:
        raise ValueError(f"not an IP address with an optional :port: {text!r}")
    address = match["v6"] or match["v4"]
    port = int(match["port6"] or match["port"] or 53)
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise ValueError(f"not an IP address with an optional :port: {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return address, port


class Lookup:
    """An async stub resolver: configured name servers (or the system's) and one timeout."""

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 5.0) -> None:
        if nameservers:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            self.resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(n)) for n in nameservers
            ]
        else:
            self.resolver = dns.asyncresolver.Resolver()
        self.resolver.lifetime = timeout
        self.resolver.timeout = min(timeout, 2.0)
        self.resolver.cache = None
        self._unreachable = ""
        """Set once a query timed out: later queries of this lookup (one verification) fail at
        once, so an unreachable resolver costs one timeout, not one per sequential step."""

    async def query(self, name: str, rdtype: str) -> Answer:
        if self._unreachable:
            return Answer(
                "error", error=f"timed out looking up {rdtype} {name} ({self._unreachable})"
            )
        try:
            result = await self.resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return Answer("nxdomain")
        except dns.resolver.NoAnswer:
            return Answer("nodata")
        except dns.resolver.LifetimeTimeout:
            self._unreachable = f"the resolver did not answer {rdtype} {name}"
            return Answer("error", error=f"timed out looking up {rdtype} {name}")
        except dns.resolver.NoNameservers as e:
            return Answer("error", error=f"{rdtype} {name}: {_servfail_reason(e)}")
        except dns.exception.DNSException as e:
            return Answer("error", error=f"{rdtype} {name}: {e}")
        if rdtype.upper() == "TXT":
            values = tuple(b"".join(r.strings).decode("utf-8", "replace") for r in result)
        else:
            values = tuple(r.to_text().rstrip(".") for r in result)
        return Answer("ok", values)

    async def txt(self, name: str) -> Answer:
        return await self.query(name, "TXT")


def _servfail_reason(error: dns.resolver.NoNameservers) -> str:
    errors = error.kwargs.get("errors") or []
    reasons = sorted({str(e[3]) for e in errors if len(e) > 3})
    return "the name servers failed (" + "; ".join(reasons or ["SERVFAIL"]) + ")"
