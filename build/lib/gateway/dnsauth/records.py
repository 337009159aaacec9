"""The DNS records a sending domain publishes, from its ``[domains."<name>"]`` table, the
dedicated ``[ips]`` of its pool and its DKIM keys; also a BIND snippet and the MTA-STS policy."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from typing import Literal

import msgspec

from gateway.config import Config, DomainSection
from gateway.dkim_keys import DkimKey, quote_txt

Purpose = Literal[
    "spf", "dkim", "dmarc", "return_path", "tracking", "mta_sts", "mta_sts_host", "tls_rpt"
]
REQUIRED: frozenset[str] = frozenset({"spf", "dkim", "dmarc"})
"""The records a domain needs to become ``verified``."""


class DnsRecord(msgspec.Struct, kw_only=True, frozen=True):
    purpose: Purpose
    name: str
    type: Literal["TXT", "CNAME", "MX"]
    value: str
    required: bool
    """Needed for the domain to be ``verified`` (SPF, DKIM and DMARC)."""
    selector: str = ""
    """DKIM only."""
    note: str = ""


def domain_section(config: Config, domain: str) -> DomainSection:
    """The domain's table, or the defaults for a domain not configured."""
    return config.domains.get(domain) or config.domains.get(domain.lower()) or DomainSection()


def sending_ips(config: Config, section: DomainSection) -> list[str]:
    """The dedicated IPs mail of this domain leaves from: its pool's ``[ips]`` (all of them
    without a pool), plus ``spf_ip``."""
    ips = [ip for ip, s in config.ips.items() if not section.pool or s.pool == section.pool]
    return [*ips, *section.spf_ip]


def spf_value(config: Config, section: DomainSection) -> str:
    terms = ["v=spf1"]
    for address in sending_ips(config, section):
        network = ipaddress.ip_network(address, strict=False)
        text = str(network.network_address) if network.num_addresses == 1 else str(network)
        terms.append(f"ip{network.version}:{text}")
    terms += [f"include:{domain}" for domain in section.spf_include]
    return " ".join([*terms, "~all"])


def dmarc_value(domain: str, section: DomainSection) -> str:
    rua = section.dmarc_rua or f"mailto:dmarc@{domain}"
    return f"v=DMARC1; p={section.dmarc_policy}; rua={rua}; adkim=r; aspf=r"


def mta_sts_policy(section: DomainSection) -> str:
    """The policy file served at ``https://mta-sts.<domain>/.well-known/mta-sts.txt``."""
    lines = ["version: STSv1", f"mode: {section.mta_sts_mode}"]
    lines += [f"mx: {mx}" for mx in section.mta_sts_mx]
    lines.append(f"max_age: {section.mta_sts_max_age}")
    return "\r\n".join(lines) + "\r\n"


def mta_sts_id(section: DomainSection) -> str:
    """The policy id: changes whenever the policy does (RFC 8461 3.1)."""
    return hashlib.sha256(mta_sts_policy(section).encode()).hexdigest()[:20]


def expected_records(config: Config, domain: str, keys: Sequence[DkimKey]) -> list[DnsRecord]:
    """Everything to publish for ``domain``, in the order an operator should do it."""
    domain = domain.lower().rstrip(".")
    section = domain_section(config, domain)
    records = [
        DnsRecord(
            purpose="spf",
            name=domain,
            type="TXT",
            value=spf_value(config, section),
            required=True,
            note="merge into an existing v=spf1 record: a domain may have only one",
        )
    ]
    for key in keys:
        if key.domain == domain and key.state != "retired":
            records.append(
                DnsRecord(
                    purpose="dkim",
                    name=key.record_name,
                    type="TXT",
                    value=key.record,
                    required=key.state == "signing",
                    selector=key.selector,
                    note="signing" if key.state == "signing" else "rotated out, keep until retired",
                )
            )
    records.append(
        DnsRecord(
            purpose="dmarc",
            name=f"_dmarc.{domain}",
            type="TXT",
            value=dmarc_value(domain, section),
            required=True,
            note="start at p=none, read the reports, then move to quarantine or reject",
        )
    )
    if section.return_path_mx:
        records.append(
            DnsRecord(
                purpose="return_path",
                name=section.return_path,
                type="MX",
                value=f"10 {section.return_path_mx}",
                required=False,
                note="bounces come back here",
            )
        )
        records.append(
            DnsRecord(
                purpose="return_path",
                name=section.return_path,
                type="TXT",
                value=spf_value(config, section),
                required=False,
                note="SPF of the Return-Path domain, which receivers check",
            )
        )
    elif section.return_path_cname:
        records.append(
            DnsRecord(
                purpose="return_path",
                name=section.return_path,
                type="CNAME",
                value=section.return_path_cname,
                required=False,
            )
        )
    if section.tracking_host and section.tracking_cname:
        records.append(
            DnsRecord(
                purpose="tracking",
                name=section.tracking_host,
                type="CNAME",
                value=section.tracking_cname,
                required=False,
            )
        )
    if section.mta_sts_mode:
        records.append(
            DnsRecord(
                purpose="mta_sts",
                name=f"_mta-sts.{domain}",
                type="TXT",
                value=f"v=STSv1; id={mta_sts_id(section)}",
                required=False,
            )
        )
        if section.mta_sts_cname:
            records.append(
                DnsRecord(
                    purpose="mta_sts_host",
                    name=f"mta-sts.{domain}",
                    type="CNAME",
                    value=section.mta_sts_cname,
                    required=False,
                    note="HTTPS host serving /.well-known/mta-sts.txt (the gateway)",
                )
            )
    records.append(
        DnsRecord(
            purpose="tls_rpt",
            name=f"_smtp._tls.{domain}",
            type="TXT",
            value=f"v=TLSRPTv1; rua={section.tls_rpt_rua or f'mailto:tls-reports@{domain}'}",
            required=False,
        )
    )
    return records


def bind_snippet(domain: str, records: Sequence[DnsRecord], ttl: int = 3600) -> str:
    """The records as BIND zone-file lines (absolute names), ready to paste or ``$INCLUDE``."""
    lines = [f"; DNS records for sending domain {domain} (generated by `gateway dns records`)"]
    for record in records:
        if record.type == "TXT":
            value = quote_txt(record.value)
        else:
            value = record.value.rstrip(".") + "."
            if record.type == "MX":
                preference, _, host = record.value.partition(" ")
                value = f"{preference} {host.rstrip('.')}."
        comment = f"  ; {record.purpose}" + (f": {record.note}" if record.note else "")
        lines.append(f"{record.name}. {ttl} IN {record.type} {value}{comment}")
    return "\n".join(lines) + "\n"
