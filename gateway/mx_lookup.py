"""DNS look-ups for delivery and routing: MX (with the implicit MX), addresses, TXT.

Uses dnspython's asyncio resolver with its TTL-honouring cache, so a busy destination costs
one query per TTL, not one per message. Nameservers and port are configurable so tests can
point it at a DNS server on loopback.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver


class MxHost(NamedTuple):
    preference: int
    host: str
    """Lower-cased, without the trailing dot."""


class LookupFailed(Exception):
    """A look-up did not give a usable answer; ``permanent`` when it never will (NXDOMAIN,
    null MX), otherwise it may work later (timeouts, SERVFAIL)."""

    def __init__(self, reason: str, *, permanent: bool, enhanced: str | None = None) -> None:
        super().__init__(f"{enhanced} {reason}" if enhanced else reason)
        self.permanent = permanent
        self.enhanced = enhanced
        """RFC 3463 status of a permanent failure: 5.1.10 null MX (RFC 7505), 5.1.2 no such
        domain."""


class DnsResolver:
    def __init__(
        self, nameservers: list[str] | None = None, port: int = 53, timeout: float = 10.0
    ) -> None:
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = list(nameservers)
            resolver.port = port
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.lifetime = timeout
        resolver.cache = dns.resolver.LRUCache(10_000)
        self._resolver = resolver

    async def mx(self, domain: str) -> list[MxHost]:
        """The domain's mail exchangers, most preferred first (ties keep DNS order); the domain
        itself when it has no MX records (RFC 5321 section 5.1's implicit MX)."""
        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NoAnswer:
            return [MxHost(0, domain.lower().rstrip("."))]
        except dns.resolver.NXDOMAIN:
            raise LookupFailed(
                f"{domain}: no such domain", permanent=True, enhanced="5.1.2"
            ) from None
        except dns.exception.DNSException as e:
            raise LookupFailed(f"{domain}: MX look-up failed: {e}", permanent=False) from None
        hosts = [
            MxHost(r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in answer
        ]
        if any(h.host in ("", ".") for h in hosts):  # RFC 7505 null MX: "0 ."
            raise LookupFailed(
                f"{domain}: the domain accepts no mail (null MX)", permanent=True, enhanced="5.1.10"
            )
        return sorted(hosts, key=lambda h: h.preference)

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of ``host`` (an IP literal is returned as it is)."""
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        found: list[str] = []
        errors: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(host, rdtype)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except dns.exception.DNSException as e:
                errors.append(f"{rdtype}: {e}")
                continue
            found.extend(r.to_text() for r in answer)
        if not found and errors:
            raise LookupFailed(f"{host}: address look-up failed: {errors[0]}", permanent=False)
        return found

    async def txt(self, name: str) -> list[str]:
        """The TXT records at ``name`` (each one's strings joined); empty when there are none."""
        try:
            answer = await self._resolver.resolve(name, "TXT")
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return []
        except dns.exception.DNSException as e:
            raise LookupFailed(f"{name}: TXT look-up failed: {e}", permanent=False) from None
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
