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
from gateway.headers import from_domain
from gateway.message import Reject
from gateway.plugin_manager import hookimpl

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


@hookimpl
async def gateway_accept_message(gateway: Any, submission: Any) -> Reject | None:
    domain = from_domain(submission.raw)
    if not domain:
        return None
    cache: VerifiedDomains = gateway.plugin_state[NAME]
    if _covered(domain, await cache.get(gateway.store, gateway.clock.now())):
        return None
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
