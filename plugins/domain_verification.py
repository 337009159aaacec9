"""Sending from an unverified domain is refused or allowed per ``[dns] unverified_sending``,
never silently.

A domain is verified when its last check (``gateway dns check`` or ``POST
/v1/domains/{d}/verify``) found SPF, DKIM and DMARC in place; the verdict is a store flag every
process and node reads. The From domain counts as verified when it or a parent domain is (a
subdomain aligns with its parent under DMARC's relaxed mode and signs with its keys).
``refuse`` answers 550 5.7.1 (SMTP) / 422 (HTTP); ``allow`` accepts and logs an INFO line
for each such message (the log level a normal accept is logged at).
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.dnsauth.state import states
from gateway.message import Reject
from gateway.plugin_manager import hookimpl
from gateway.submission.sender_policy import authors, single_headers

NAME = "domain_verification"
DEFAULT_ENABLED = True

CACHE_SECONDS = 10.0
"""How long the verified set is reused before the store is read again."""

log = logging.getLogger("gateway.plugins.domain_verification")


class VerifiedDomains:
    """The set of verified domains, read from the store at most every ``CACHE_SECONDS``."""

    def __init__(self) -> None:
        self.domains: frozenset[str] = frozenset()
        self.read_at: float | None = None

    async def get(self, store: Any, now: float) -> frozenset[str]:
        if self.read_at is None or not 0 <= now - self.read_at < CACHE_SECONDS:
            found = await states(store)
            self.domains = frozenset(d for d, s in found.items() if s.status == "verified")
            self.read_at = now
        return self.domains


def _covered(domain: str, verified: frozenset[str]) -> bool:
    labels = domain.split(".")
    return any(".".join(labels[i:]) in verified for i in range(len(labels) - 1))


@hookimpl
def gateway_configure(gateway: Any, config: Any) -> None:
    gateway.plugin_state[NAME] = VerifiedDomains()


def author_domains(raw: bytes) -> list[str]:
    """The domain of every author in the From header, RFC 5322-parsed (groups and all);
    the gateway's sender policy has already refused duplicate or unparsable From headers."""
    headers = single_headers(raw)
    value = headers.get("from") if isinstance(headers, dict) else None
    found = authors(value) if value else None
    return sorted({a.rpartition("@")[2].lower().rstrip(".") for a in found or ()})


@hookimpl
async def gateway_accept_message(gateway: Any, submission: Any) -> Reject | None:
    domains = author_domains(submission.raw)
    if not domains:
        return None
    cache: VerifiedDomains = gateway.plugin_state[NAME]
    verified = await cache.get(gateway.store, gateway.clock.now())
    unverified = [d for d in domains if not _covered(d, verified)]
    if not unverified:
        return None
    domain = unverified[0]
    if gateway.config.dns.unverified_sending == "refuse":
        return Reject(
            550,
            "5.7.1",
            f"Sender domain {domain} is not verified: publish its DNS records "
            f"(gateway dns records {domain}) and check them (gateway dns check {domain})",
        )
    log.info(
        "accepting mail from unverified domain %s (tenant %s, envelope from %s): "
        "[dns] unverified_sending = allow",
        domain,
        submission.tenant,
        submission.mail_from,
    )
    return None
