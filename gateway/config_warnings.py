"""Settings that are valid but probably not what the operator meant.

``gateway check-config`` prints these and ``gateway serve`` logs them at start; neither
refuses to run, since each can be intended (a listener kept for later, say).
"""

from __future__ import annotations

import ipaddress

from gateway.config import Config, ListenerSection, is_loopback

_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def config_warnings(config: Config) -> list[str]:
    """One sentence per suspicious setting, saying what to do about it."""
    return [w for listener in config.smtp.listeners if (w := _listener_warning(config, listener))]


def _listener_warning(config: Config, listener: ListenerSection) -> str | None:
    """A listener that can accept mail from nobody: no tenant trusts a network that reaches
    it, and no SMTP user can log in on it."""
    networks = [
        ipaddress.ip_network(network, strict=False)
        for tenant in config.tenants.values()
        for network in tenant.smtp_networks
    ]
    if is_loopback(listener.address):
        networks = [n for n in networks if any(_overlaps(n, lo) for lo in _LOOPBACK)]
    has_users = any(tenant.smtp_users for tenant in config.tenants.values())
    offers_auth = listener.tls != "none" or listener.insecure_auth
    if networks or (has_users and offers_auth):
        return None
    where = f"smtp listener {listener.name} ({listener.address}:{listener.port})"
    trust = (
        "no tenant trusts a loopback network"
        if is_loopback(listener.address)
        else "no tenant trusts any network"
    )
    login = "no tenant has smtp_users" if offers_auth else 'it offers no AUTH (tls = "none")'
    return (
        f"{where} accepts mail from nobody: {trust} (tenants.<name>.smtp_networks) and {login}. "
        'Add smtp_networks = ["127.0.0.1/32", "::1/128"] to a tenant, or SMTP users.'
    )


def _overlaps(
    a: ipaddress.IPv4Network | ipaddress.IPv6Network,
    b: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> bool:
    return a.version == b.version and a.overlaps(b)
