"""A domain's last verification result, kept as a store flag so every process and node (and
the accept policy) sees what ``gateway dns check`` or ``POST /v1/domains/{d}/verify`` found."""

from __future__ import annotations

import msgspec

from gateway.clock import SystemClock
from gateway.config import Config
from gateway.dkim_keys import configured_keys
from gateway.dnsauth.lookup import Lookup, parse_nameserver
from gateway.dnsauth.verify import DomainReport, verify_domain
from gateway.mta_sts import MtaSts
from gateway.mx_lookup import DnsResolver
from gateway.store.base import Store

FLAG_PREFIX = "dns-verified:"


class VerificationState(msgspec.Struct, kw_only=True, frozen=True):
    status: str
    checked_at: float


async def save(store: Store, report: DomainReport) -> None:
    state = VerificationState(status=report.status, checked_at=report.checked_at)
    await store.set_flag(FLAG_PREFIX + report.domain, msgspec.json.encode(state).decode())


async def states(store: Store) -> dict[str, VerificationState]:
    """Domain → its last verification result."""
    found = {}
    for key, value in (await store.flags(FLAG_PREFIX)).items():
        try:
            found[key.removeprefix(FLAG_PREFIX)] = msgspec.json.decode(
                value, type=VerificationState
            )
        except msgspec.DecodeError:
            continue  # written by something else; the domain counts as unverified
    return found


def lookup_for(config: Config) -> Lookup:
    return Lookup(config.dns.resolvers, config.dns.timeout)


def policy_fetcher(config: Config) -> MtaSts:
    """Fetches a domain's MTA-STS policy over HTTPS, resolving through ``[dns] resolvers``."""
    servers = [parse_nameserver(text) for text in config.dns.resolvers]
    resolver = DnsResolver(
        [address for address, _ in servers],
        port=servers[0][1] if servers else 53,
        timeout=config.dns.timeout,
    )
    return MtaSts(resolver, SystemClock(), timeout=config.dns.timeout)


async def verify_and_save(config: Config, store: Store, domain: str, now: float) -> DomainReport:
    """Check ``domain``'s DNS now and remember the verdict.

    "could not check" keeps a previous ``verified``: a DNS outage must not stop mail."""
    keys = configured_keys(config, domain)
    fetcher = policy_fetcher(config)
    try:
        report = await verify_domain(
            lookup_for(config), config, domain, keys, now, fetch_policy=fetcher.fetch
        )
    finally:
        await fetcher.close()
    if report.status == "could_not_check":
        return report
    await save(store, report)
    return report
